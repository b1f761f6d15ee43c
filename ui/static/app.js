// rbee dashboard: wiring. Feed messages and /v1/cluster documents update the
// state at once (so nothing is lost while the tab is hidden and animation
// frames pause); the view renders what changed at most once per animation
// frame.

import { newState, applyMessage, applyCluster, feedCandidates, tick, logEvent } from './model.js';
import { openFeed } from './feed.js';
import { createView } from './view.js';

const origin = location.host;
// A page opened with ?token=... (a dashboard on another origin, or a node
// with a cluster key reached from beyond loopback) passes it on.
const token = new URLSearchParams(location.search).get('token') || '';
// /v1/cluster is refetched this often for members and offline hives; the feed
// carries everything else.
const CLUSTER_EVERY_MS = 5000;

const st = newState(Date.now());
const view = createView(st, origin);

// Renders are coalesced per animation frame (a message only updates the
// state), and frames that render are at least MIN_FRAME_MS apart: a large cluster's hives report all through the
// second (100 hives: a message every 10 ms), and drawing each in its own frame
// would cost a frame's fixed work 60 times a second for changes nobody can
// tell apart at 1 Hz. Input (filter, collapse) renders at the next frame.
const MIN_FRAME_MS = 100;
// Scrolling renders at the next frame too, even when a later frame was
// planned: only the hives on screen are in the DOM.
let framePending = false;
let frameTimer = 0;
let lastFrame = -Infinity;
let firstData = false;
function schedule(now = false) {
  if (framePending && !(now && frameTimer)) return;
  framePending = true;
  const wait = lastFrame + MIN_FRAME_MS - performance.now();
  if (now || wait <= 0) {
    clearTimeout(frameTimer);
    frameTimer = 0;
    requestAnimationFrame(flush);
  } else {
    frameTimer = setTimeout(() => {
      frameTimer = 0;
      requestAnimationFrame(flush);
    }, wait);
  }
}
view.setScheduler(schedule);

let allRows = false;
function flush() {
  if (!framePending) return; // a frame asked for twice
  framePending = false;
  lastFrame = performance.now();
  const more = view.render(Date.now());
  if (!firstData && st.hives.size > 0) {
    firstData = true;
    performance.mark('rbee:first-data');
  }
  if (more) schedule(true);
  else if (firstData && !allRows) {
    allRows = true;
    performance.mark('rbee:all-rows');
  }
}

// --- feed

let wasLive = false;
const feed = openFeed({
  origin,
  token,
  candidates: () => feedCandidates(st, origin),
  onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // not ours to show; the node validated what it relays
    }
    const now = Date.now();
    const before = st.queen;
    applyMessage(st, msg, now);
    if (st.queen !== before) {
      // Membership is changing: look now, and again once gossip settled.
      fetchCluster();
      setTimeout(fetchCluster, 1500);
    }
    schedule();
  },
  onState(c) {
    const now = Date.now();
    Object.assign(st.conn, { state: c.state, target: c.target, attempt: c.attempt || 0, delay: c.delay || 0, since: now });
    if (c.state === 'live') {
      st.conn.lastMsgAt = now;
      if (wasLive) logEvent(st, now, `feed reconnected to ${c.target}`, 'ok');
      wasLive = true;
      fetchCluster();
    } else if (c.state === 'waiting' && c.attempt === 1) {
      const why = c.reason ? `: ${c.reason}` : c.code ? ` (${c.code})` : '';
      logEvent(st, now, `feed lost${why}`, 'bad');
    }
    st.dirty.conn = true;
    schedule();
  },
});
addEventListener('pagehide', () => feed.close());

// --- /v1/cluster

let fetching = false;
async function fetchCluster() {
  if (fetching) return;
  fetching = true;
  try {
    // The page's own node first; after a failover to another node's feed,
    // that node (which answers only when it sends CORS headers).
    const hosts = [...new Set([origin, feed.target()])];
    for (const host of hosts) {
      try {
        const doc = await getCluster(host);
        applyCluster(st, doc, host, Date.now());
        schedule();
        return;
      } catch {
        // try the next one; the view shows how old the last document is
      }
    }
  } finally {
    fetching = false;
  }
}

async function getCluster(host) {
  const url = host === origin ? '/v1/cluster' : `${location.protocol}//${host}/v1/cluster`;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(url, { headers, cache: 'no-store', signal: AbortSignal.timeout(4000) });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return res.json();
}

fetchCluster();

// Time alone changes things: freshness, "no report for N s", backoff
// countdowns. Twice a second is enough for 2.5 s and 5 s thresholds.
setInterval(() => {
  const now = Date.now();
  tick(st, now);
  if (st.conn.state === 'live' && now - st.clusterAt > CLUSTER_EVERY_MS) fetchCluster();
  schedule();
}, 500);

// --- filter

const filter = document.getElementById('filter');
filter.addEventListener('input', () => {
  st.filter = filter.value.trim().toLowerCase();
  st.dirty.filter = true;
  schedule(true);
});
