// session-ledger.js: the browser side of session-ledger's cookie flow. One ES module, no dependencies.
//
//   import { createSession } from "https://auth.example.com/session-ledger.js";
//   const session = createSession({ base: "https://auth.example.com" });
//   const res = await session.fetch("/api/me");  // Bearer added; a 401 refreshes once and retries
//   session.onEnded(() => showLogin());           // the session ended (logout, reuse, expiry)
//   await session.devices();                       // my sessions; await session.signOutOthers();
//   await session.logout();
//
// The refresh token lives in an HttpOnly cookie this code never sees; the access token only in
// memory. One refresh at a time across every tab of the origin: a Web Lock serialises them, the
// tab that refreshed hands the new access token to the others over a BroadcastChannel, and the
// last refresh's mark (session id + generation, nothing secret) is kept in IndexedDB so that a tab
// entering the lock knows whether a refresh happened since it asked. Requests made while a
// refresh is in flight wait for it (queuing) instead of starting their own.

const LOCK = "session-ledger-refresh";
const CHANNEL = "session-ledger";
const DB = "session-ledger";

export class SessionEnded extends Error {
  constructor(status) {
    super("session ended");
    this.status = status;
  }
}

function request(idb) {
  return new Promise((resolve) => {
    idb.onsuccess = () => resolve(idb.result);
    idb.onerror = () => resolve(undefined);
  });
}

async function store(mode) {
  if (!("indexedDB" in globalThis)) return undefined;
  const open = indexedDB.open(DB, 1);
  open.onupgradeneeded = () => open.result.createObjectStore("marks");
  const db = await request(open);
  return db && db.transaction("marks", mode).objectStore("marks");
}

async function readMark() {
  const marks = await store("readonly");
  return marks ? (await request(marks.get("last"))) ?? null : null;
}

async function writeMark(mark) {
  const marks = await store("readwrite");
  if (!marks) return;
  await new Promise((resolve) => {
    marks.put(mark, "last");
    marks.transaction.oncomplete = resolve;
    marks.transaction.onerror = resolve;
    marks.transaction.onabort = resolve;
  });
}

export function createSession(options = {}) {
  const base = options.base ?? "";
  const csrfHeader = options.csrfHeader ?? "X-Session-Ledger";
  const refreshEarlyMs = options.refreshEarlyMs ?? 30_000;
  const peerWaitMs = options.peerWaitMs ?? 5_000;
  const channel = "BroadcastChannel" in globalThis ? new BroadcastChannel(CHANNEL) : null;
  const ended = new Set();
  const waiting = new Set();
  let current = null; // { accessToken, expiresAt, mark, session }
  let known = null; // the latest refresh mark this tab knows of (its own or a peer's)
  let inflight = null;
  const ready = readMark().then((mark) => {
    known ??= mark;
  });

  function adopt(token) {
    current = token;
    known = token.mark;
    for (const wake of waiting) wake();
  }

  function end(status, tell) {
    current = null;
    if (tell) channel?.postMessage({ type: "ended", status });
    for (const callback of ended) callback(status);
  }

  if (channel) {
    channel.onmessage = ({ data }) => {
      if (data?.type === "token") adopt(data.token);
      else if (data?.type === "ended") end(data.status, false);
    };
  }

  function peerToken(mark) {
    if (current?.mark === mark) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        if (current?.mark !== mark) return;
        waiting.delete(wake);
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        waiting.delete(wake);
        resolve(false);
      }, peerWaitMs);
      waiting.add(wake);
    });
  }

  async function refreshNow() {
    const res = await fetch(`${base}/session/refresh`, {
      method: "POST",
      credentials: "include",
      headers: { [csrfHeader]: "1" },
    });
    if (res.status === 401) {
      end(401, true);
      throw new SessionEnded(401);
    }
    if (!res.ok) throw new Error(`refresh failed with ${res.status}`);
    const body = await res.json();
    const token = {
      accessToken: body.access_token,
      expiresAt: Date.now() + body.expires_in * 1000,
      mark: `${body.sid}.${body.generation}`,
      session: { sid: body.sid, idleExpiresAt: body.idle_expires_at, sessionExpiresAt: body.session_expires_at },
    };
    adopt(token);
    channel?.postMessage({ type: "token", token }); // before the mark: whoever reads the mark gets it
    await writeMark(token.mark);
    return token;
  }

  async function underLock(seen) {
    const mark = await readMark();
    if (mark !== null && mark !== seen && (await peerToken(mark))) return current; // a peer refreshed
    return refreshNow();
  }

  function refresh() {
    inflight ??= (async () => {
      await ready;
      const seen = known;
      return navigator.locks ? navigator.locks.request(LOCK, () => underLock(seen)) : underLock(seen);
    })().finally(() => {
      inflight = null;
    });
    return inflight;
  }

  async function accessToken() {
    if (inflight) await inflight;
    if (!current || current.expiresAt - Date.now() < refreshEarlyMs) await refresh();
    return current.accessToken;
  }

  async function authorizedFetch(input, init = {}) {
    const send = (token) => {
      const headers = new Headers(init.headers);
      headers.set("Authorization", `Bearer ${token}`);
      return fetch(input, { ...init, headers });
    };
    const used = await accessToken();
    const res = await send(used);
    if (res.status !== 401) return res;
    if (current?.accessToken === used) await refresh(); // else a peer refreshed meanwhile
    return send(current.accessToken);
  }

  // Self-service with this session's access token: my devices, revoke one, sign out the others.
  // A refusal throws an Error with .status and .error (e.g. "insufficient_user_authentication":
  // the gateway requires a step-up; re-authenticate, then refresh).
  async function selfService(method, path) {
    const res = await authorizedFetch(`${base}${path}`, { method });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(body.error_description ?? `${path} failed with ${res.status}`);
      Object.assign(err, { status: res.status, error: body.error });
      throw err;
    }
    return body;
  }

  async function logout() {
    await fetch(`${base}/session/logout`, { method: "POST", credentials: "include", headers: { [csrfHeader]: "1" } });
    end(0, true);
  }

  return {
    fetch: authorizedFetch,
    accessToken,
    refresh,
    logout,
    info: () => (current ? { expiresAt: current.expiresAt, ...current.session } : null),
    onEnded: (callback) => ended.add(callback),
    devices: () => selfService("GET", "/session/devices").then((body) => body.sessions),
    revokeDevice: (sid) => selfService("POST", `/session/devices/${encodeURIComponent(sid)}/revoke`),
    signOutOthers: () => selfService("POST", "/session/sign-out-others"),
  };
}
