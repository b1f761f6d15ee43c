// The feed connection: one WebSocket to /v1/heartbeats/stream, reopened by
// itself. Every node serves the queen's feed (a node that is not queen relays
// it), so any live node will do. On close it retries the same node with
// backoff; a node that stays unreachable is given up for the next candidate
// (the page's own node, then the members of the last /v1/cluster).

export const FEED_PATH = '/v1/heartbeats/stream';

// Backoff: 250 ms doubling to 5 s, ±20% jitter so that many dashboards do not
// redial a recovering node in step.
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
// Tries on the same node before moving on.
const SAME_NODE_TRIES = 2;
// The queen sends an event every 2.5 s; an open feed silent this long is
// presumed dead (a half-open TCP connection) and reopened.
const SILENCE_MS = 10_000;

// openFeed starts the connection loop. opts:
//   origin      host:port of the page's node
//   token       cluster HTTP token, '' for none
//   batch       ask for ?batch=1: several events a message, as a JSON array
//               (a node that does not know it ignores it and sends each
//               event alone)
//   candidates  () => [host:port...] to try after the current node fails
//   onMessage   (data string, target) for each text message
//   onState     ({state, target, attempt, delay, code, reason}) on every change
// It returns {close(), target()}.
export function openFeed(opts) {
  let ws = null;
  let target = opts.origin;
  let attempt = 0; // failures since the last open
  let tries = 0; // failures on the current target
  let timer = 0;
  let lastMsg = 0;
  let closed = false;

  const watchdog = setInterval(() => {
    if (ws && ws.readyState === WebSocket.OPEN && performance.now() - lastMsg > SILENCE_MS) {
      ws.close(4000, 'no message for 10 s');
      lost(ws, 4000, 'silent');
    }
  }, 1000);

  function url(host) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const q = [];
    if (opts.batch) q.push('batch=1');
    if (opts.token) q.push(`token=${encodeURIComponent(opts.token)}`);
    return `${scheme}://${host}${FEED_PATH}${q.length ? `?${q.join('&')}` : ''}`;
  }

  function open() {
    timer = 0;
    if (closed) return;
    opts.onState({ state: 'connecting', target, attempt });
    let sock;
    try {
      sock = new WebSocket(url(target));
    } catch {
      retry(0, 'bad address');
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      attempt = 0;
      tries = 0;
      lastMsg = performance.now();
      opts.onState({ state: 'live', target });
    };
    sock.onmessage = (e) => {
      if (ws !== sock) return;
      lastMsg = performance.now();
      if (typeof e.data === 'string') opts.onMessage(e.data, target);
    };
    sock.onclose = (e) => lost(sock, e.code, e.reason);
  }

  function lost(sock, code, reason) {
    if (ws !== sock) return;
    ws = null;
    sock.onopen = sock.onmessage = sock.onclose = null;
    retry(code, reason);
  }

  function retry(code, reason) {
    if (closed) return;
    tries++;
    if (tries >= SAME_NODE_TRIES) {
      const list = opts.candidates().filter((h) => h !== target);
      if (list.length > 0) {
        target = list[(attempt / SAME_NODE_TRIES | 0) % list.length];
        tries = 0;
      }
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    attempt++;
    opts.onState({ state: 'waiting', target, attempt, delay, code, reason });
    timer = setTimeout(open, delay);
  }

  open();
  return {
    target: () => target,
    close() {
      closed = true;
      clearInterval(watchdog);
      clearTimeout(timer);
      if (ws) ws.close(1000, 'page closed');
      ws = null;
    },
  };
}
