// The dashboard's engine: everything that does not touch the DOM. It reads the
// feed and /v1/cluster, parses them, keeps the cluster in the model
// (model.js), and hands the page only what the page shows: the connection,
// the summary figures, members, queues, new events, the list of hives the
// filter lets through (names and worker counts, for the page's scroll
// height), and the whole of the hives the page asked for (those on or near
// the screen). It runs in a Web Worker (worker.js), so that parsing a cluster
// of 1000 hives' reports costs the page's thread nothing; where a page cannot
// start one it runs on the page's thread, with the same messages.
//
// Messages from the page:
//   {type: 'window', ids}   the hives whose whole state the page wants
//   {type: 'filter', q}     the filter's text, lower case
//   {type: 'ready'}         the page rendered the last update: send the next
//   {type: 'close'}         the page is going away
// To the page: update objects (see post below), one at a time: the next only
// after the page said it is ready, so that a busy or hidden page is sent one
// update with everything that changed instead of a queue of them.

import { newState, applyMessage, applyCluster, feedCandidates, tick, logEvent, summary, currentQueues } from './model.js';
import { openFeed } from './feed.js';
import { compareIDs } from './format.js';

// /v1/cluster is refetched this often for members and offline hives; the feed
// carries everything else.
const CLUSTER_EVERY_MS = 5000;
// Updates are at least this far apart: a large cluster's hives report all
// through the second (1000 hives: a message a millisecond), and nobody can
// tell 1 Hz figures drawn 60 times a second from ten. What the page asked for
// (another window, another filter) goes out at once.
const MIN_UPDATE_MS = 100;

// createEngine starts reading the cluster. opts: origin (host:port of the
// page's node), token ('' for none), post (update => void).
export function createEngine({ origin, token, post }) {
  const st = newState(Date.now());
  // The hives the page wants whole, and those of them it has been sent
  // since it asked.
  let wanted = new Set();
  const sent = new Set();
  let orderDirty = true;
  let lastEvent = 0;
  let ready = false;
  let urgent = false;
  let timer = 0;
  let lastPost = -Infinity;
  let closed = false;

  function schedule(now = false) {
    if (now) urgent = true;
    if (!ready || closed || (timer && !now)) return;
    clearTimeout(timer);
    const wait = urgent ? 0 : lastPost + MIN_UPDATE_MS - performance.now();
    timer = setTimeout(flush, Math.max(0, wait));
  }

  function flush() {
    timer = 0;
    if (!ready || closed) return;
    ready = false;
    urgent = false;
    lastPost = performance.now();
    post(update(Date.now()));
  }

  // update takes the model's dirty marks and builds what the page needs of
  // them.
  function update(now) {
    const d = st.dirty;
    const u = { now };
    if (d.conn) u.conn = { ...st.conn };
    if (d.summary) {
      u.summary = summary(st, now);
      u.summary.known = !!(st.queenEvent || st.cluster);
      u.summary.clusterAt = st.clusterAt;
      u.summary.hasCluster = !!st.cluster;
    }
    if (d.members) {
      const doc = st.cluster;
      u.members = {
        list: doc && Array.isArray(doc.members) ? doc.members : [],
        has: !!doc,
        queen: st.queen,
        from: st.clusterFrom,
        at: st.clusterAt,
      };
    }
    if (d.queues) u.queues = currentQueues(st);
    if (d.events) {
      u.events = st.events.filter((e) => e.id > lastEvent);
      if (u.events.length) lastEvent = u.events[u.events.length - 1].id;
    }
    d.conn = d.summary = d.members = d.queues = d.events = false;

    const hives = [];
    const removed = [];
    const q = st.filter;
    for (const h of d.hives) {
      if (h.removed) {
        removed.push(h.id);
        sent.delete(h.id);
        orderDirty = true;
        continue;
      }
      // The list changes with a hive's worker count (the page guesses
      // heights from it) and, under a filter, with its workers.
      if (h.match === undefined || h.workers.size !== h.listedSize || (q && hiveMatches(h) !== h.match)) orderDirty = true;
      if (wanted.has(h.id)) {
        hives.push(whole(h));
        sent.add(h.id);
      }
    }
    d.hives.clear();
    for (const id of wanted) {
      if (sent.has(id)) continue;
      const h = st.hives.get(id);
      if (h) hives.push(whole(h));
      sent.add(id);
    }
    if (hives.length) u.hives = hives;
    if (removed.length) u.removed = removed;
    if (orderDirty) {
      orderDirty = false;
      const list = [];
      for (const h of st.hives.values()) {
        h.match = hiveMatches(h);
        h.listedSize = h.workers.size;
        if (h.match) list.push(h);
      }
      list.sort((a, b) => compareIDs(a.id, b.id));
      u.order = list.map((h) => h.id);
      u.sizes = list.map((h) => h.workers.size);
    }
    return u;
  }

  function matches(w, q) {
    if (w.key.toLowerCase().includes(q)) return true;
    const m = w.s && typeof w.s.model === 'string' ? w.s.model.toLowerCase() : 'unknown';
    return m.includes(q);
  }

  // hiveMatches: the hive is listed under the filter (its name, or one of
  // its workers' names or models, has the text).
  function hiveMatches(h) {
    const q = st.filter;
    if (!q || h.id.toLowerCase().includes(q)) return true;
    for (const w of h.workers.values()) if (matches(w, q)) return true;
    return false;
  }

  // whole is all the page shows of a hive: each send is complete (history
  // included), so that the page never has to merge.
  function whole(h) {
    const workers = [];
    for (const w of h.workers.values()) {
      workers.push({
        key: w.key, s: w.s, busy: w.busy, slots: w.slots, gone: w.gone,
        gpu: w.gpu, vram: w.vram, len: w.len, head: w.head,
      });
    }
    return {
      id: h.id, status: h.status, reported: h.reported, lastSeen: h.lastSeen, docLastSeen: h.docLastSeen,
      leases: h.leases, catalog: h.catalog, gpus: h.gpus, managed: h.managed, workers,
    };
  }

  // --- feed

  let wasLive = false;
  const feed = openFeed({
    origin,
    token,
    batch: true,
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
      // A node that batches sends an array of events; one that does not
      // (it ignores ?batch=1) sends each event alone.
      if (Array.isArray(msg)) for (const m of msg) applyMessage(st, m, now);
      else applyMessage(st, msg, now);
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

  // --- /v1/cluster

  let fetching = false;
  async function fetchCluster() {
    if (fetching || closed) return;
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
    const url = `${location.protocol}//${host}/v1/cluster`;
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(url, { headers, cache: 'no-store', signal: AbortSignal.timeout(4000) });
    if (!res.ok) throw new Error(`${url}: ${res.status}`);
    return res.json();
  }

  fetchCluster();

  // Time alone changes things: freshness, "no report for N s", backoff
  // countdowns. Twice a second is enough for 2.5 s and 5 s thresholds.
  const ticker = setInterval(() => {
    const now = Date.now();
    tick(st, now);
    if (st.conn.state === 'live' && now - st.clusterAt > CLUSTER_EVERY_MS) fetchCluster();
    schedule();
  }, 500);

  return {
    // handle takes a message from the page.
    handle(m) {
      switch (m && m.type) {
        case 'window':
          wanted = new Set(m.ids);
          for (const id of sent) if (!wanted.has(id)) sent.delete(id);
          schedule(true);
          break;
        case 'filter':
          st.filter = typeof m.q === 'string' ? m.q : '';
          orderDirty = true;
          schedule(true);
          break;
        case 'ready':
          ready = true;
          schedule();
          break;
        case 'close':
          closed = true;
          clearInterval(ticker);
          clearTimeout(timer);
          feed.close();
          break;
      }
    },
  };
}
