// The dashboard's state: plain objects updated by feed messages and /v1/cluster
// documents. Nothing here touches the DOM or reads the clock; every function
// takes `now` (epoch ms). What changed is recorded in state.dirty for the view,
// which renders it once per animation frame.

// A hive reports every second; after STALE_MS without a report it is stale,
// after OFFLINE_MS offline (the queen itself drops it after 3 s by default).
export const STALE_MS = 2500;
export const OFFLINE_MS = 5000;
// A worker missing from its hive's latest report stays on screen, marked gone,
// this long.
export const GONE_KEEP_MS = 60_000;
// A hive offline this long and absent from /v1/cluster is dropped (the queen
// forgets hives after 10 minutes).
export const FORGET_MS = 10 * 60_000;
// Sparkline history: one sample a second for five minutes.
export const HISTORY = 300;
export const SAMPLE_MS = 1000;
// After a queen change, the new queen's first events list only the hives that
// redialled it so far; absence from hive_ids means nothing for this long.
export const QUEEN_GRACE_MS = 5000;
// Hive transitions are not logged while the first reports arrive.
const QUIET_MS = 3000;
const MAX_EVENTS = 200;
// The worker states the queen sends (scheduler.State, the one rule every view
// shows); a worker in none of them shows as unknown.
export const WORKER_STATES = new Set(['idle', 'busy', 'saturated', 'failing', 'down', 'offline']);

export function newState(now) {
  return {
    startedAt: now,
    firstDataAt: 0,
    // The queen as last named by the feed or /v1/cluster, and since when.
    queen: '',
    queenAt: 0,
    queenChanged: false,
    queenEvent: null,
    queenEventAt: 0,
    queenHives: new Set(),
    cluster: null, // last /v1/cluster document
    clusterAt: 0,
    clusterFrom: '',
    hives: new Map(), // hive_id -> hive
    events: [], // {id, at, text, level}
    eventSeq: 0,
    // Keys of the migrations logged already: the queen lists its latest
    // in every event, and each is logged once.
    migrationsSeen: new Set(),
    filter: '',
    conn: { state: 'connecting', target: '', delay: 0, attempt: 0, since: now, lastMsgAt: 0 },
    dirty: { summary: true, members: true, queues: true, events: false, conn: true, filter: false, hives: new Set() },
  };
}

function newHive(id) {
  return {
    id,
    reported: false, // has the feed reported it (else only /v1/cluster)
    lastSeen: 0, // when its last report arrived (ms, this browser's clock)
    docOnline: false,
    docLastSeen: '', // server time from /v1/cluster when only it knows
    status: 'offline',
    offlineAt: 0,
    workers: new Map(), // "group/instance" -> worker
    order: [], // worker keys, sorted
    orderChanged: true,
    leases: 0,
    // The model lifecycle's parts of its last report (empty from a hive
    // or queen before it): what it can start, its GPUs, the workers rbee
    // started there.
    catalog: [],
    gpus: [],
    managed: [],
    removed: false,
    // Its workers not gone, and those simulated (countWorkers).
    live: 0,
    sim: 0,
  };
}

function newWorker(key) {
  return {
    key,
    s: null, // last ProcessStats
    busy: 0,
    slots: 1,
    gone: false,
    goneAt: 0,
    dirty: true,
    // Ring buffers of GPU util % and VRAM % of total; NaN marks a gap.
    gpu: new Float32Array(HISTORY),
    vram: new Float32Array(HISTORY),
    len: 0,
    head: 0, // index of the next write
    sampleAt: 0,
    histDirty: true,
  };
}

export function logEvent(st, now, text, level = 'info') {
  st.events.push({ id: ++st.eventSeq, at: now, text, level });
  if (st.events.length > MAX_EVENTS) st.events.splice(0, st.events.length - MAX_EVENTS);
  st.dirty.events = true;
}

function quiet(st, now) {
  return !st.firstDataAt || now - st.firstDataAt < QUIET_MS;
}

export function setQueen(st, name, now) {
  if (!name || name === st.queen) return;
  if (st.queen) {
    logEvent(st, now, `queen changed: ${st.queen} → ${name}`, 'warn');
    st.queenChanged = true;
  } else {
    logEvent(st, now, `queen is ${name}`);
  }
  st.queen = name;
  st.queenAt = now;
  st.dirty.summary = true;
  st.dirty.members = true;
}

// applyMessage applies one feed message (parsed JSON). It returns what it was,
// or '' for a message it ignores (newer peers may send more kinds).
export function applyMessage(st, msg, now) {
  st.conn.lastMsgAt = now;
  if (!msg || typeof msg !== 'object') return '';
  switch (msg.type) {
    case 'hive_telemetry':
      if (typeof msg.hive_id !== 'string' || !Array.isArray(msg.workers)) return '';
      applyTelemetry(st, msg.hive_id, msg.workers, msg.leases, now, msg);
      return msg.type;
    case 'queen':
      applyQueen(st, msg, now);
      return msg.type;
    default:
      return '';
  }
}

function hive(st, id, now) {
  let h = st.hives.get(id);
  if (!h) {
    h = newHive(id);
    st.hives.set(id, h);
    if (!quiet(st, now)) logEvent(st, now, `hive ${id} joined`);
  }
  return h;
}

function applyTelemetry(st, id, workers, leases, now, report) {
  if (!st.firstDataAt) st.firstDataAt = now;
  const h = hive(st, id, now);
  h.reported = true;
  h.lastSeen = now;
  applyLifecycle(st, h, report || {}, now);
  const busy = new Map();
  if (Array.isArray(leases)) {
    for (const l of leases) {
      if (l && typeof l.worker === 'string') busy.set(l.worker, (busy.get(l.worker) || 0) + 1);
    }
    h.leases = leases.length;
  } else {
    h.leases = 0;
  }
  const seen = new Set();
  for (const s of workers) {
    if (!s || typeof s !== 'object') continue;
    const key = `${s.group}/${s.instance}`;
    seen.add(key);
    let w = h.workers.get(key);
    if (!w) {
      w = newWorker(key);
      h.workers.set(key, w);
      h.orderChanged = true;
    } else if (w.gone) {
      w.gone = false;
    }
    w.s = s;
    w.busy = busy.get(key) || 0;
    w.slots = s.slots > 0 ? s.slots : 1; // omitted means 1
    sample(w, s, now);
    w.dirty = true;
  }
  for (const w of h.workers.values()) {
    if (!seen.has(w.key) && !w.gone) {
      w.gone = true;
      w.goneAt = now;
      w.busy = 0;
      w.dirty = true;
      logEvent(st, now, `worker ${id}/${w.key} gone`, 'warn');
    }
  }
  countWorkers(h);
  updateStatus(st, h, now);
  st.dirty.hives.add(h);
  st.dirty.summary = true;
}

// countWorkers tallies a hive's workers for summary, which would otherwise
// walk every worker of every hive several times a second.
function countWorkers(h) {
  let live = 0;
  let sim = 0;
  for (const w of h.workers.values()) {
    if (!w.gone) live++;
    if (w.s && w.s.simulated) sim++;
  }
  h.live = live;
  h.sim = sim;
}

// applyLifecycle takes a report's catalog, GPUs and managed workers, and
// logs what a person wants to hear of: a worker that started loading or got
// ready, a model start that failed.
function applyLifecycle(st, h, r, now) {
  const list = (v) => (Array.isArray(v) ? v.filter((x) => x && typeof x === 'object') : []);
  const catalog = list(r.catalog);
  const managed = list(r.managed);
  if (!quiet(st, now)) {
    const was = new Map(h.managed.map((m) => [m.instance, m.state]));
    for (const m of managed) {
      const before = was.get(m.instance);
      if (before === m.state) continue;
      if (m.state === 'loading') logEvent(st, now, `hive ${h.id} loading ${m.model} (models/${m.instance})`);
      else if (m.state === 'ready' && before === 'loading') logEvent(st, now, `hive ${h.id}: ${m.model} ready (models/${m.instance})`, 'ok');
    }
    const failed = new Map(h.catalog.map((c) => [c.name, c.failures || 0]));
    for (const c of catalog) {
      if ((c.failures || 0) > (failed.get(c.name) || 0)) {
        logEvent(st, now, `hive ${h.id}: ${c.name} failed to start: ${firstLine(c.fail_reason) || 'no reason given'}`, 'bad');
      }
    }
  }
  h.catalog = catalog;
  h.gpus = list(r.gpus);
  h.managed = managed;
}

// firstLine is the first non-blank line of a text (an engine's output).
export function firstLine(s) {
  if (typeof s !== 'string') return '';
  return s.split('\n').map((l) => l.trim()).filter(Boolean)[0] || '';
}

// sample records GPU and VRAM into the worker's history, at most one sample a
// second (a faster hive overwrites the latest), with NaN for missed seconds.
function sample(w, s, now) {
  const gpu = +s.gpu_util_pct || 0;
  const vram = s.total_vram_mb > 0 ? (100 * s.vram_mb) / s.total_vram_mb : NaN;
  if (w.len > 0 && now - w.sampleAt < SAMPLE_MS * 0.9) {
    const i = (w.head + HISTORY - 1) % HISTORY;
    w.gpu[i] = gpu;
    w.vram[i] = vram;
  } else {
    if (w.len > 0) {
      const gaps = Math.min(HISTORY, Math.round((now - w.sampleAt) / SAMPLE_MS) - 1);
      for (let g = 0; g < gaps; g++) push(w, NaN, NaN);
    }
    push(w, gpu, vram);
    w.sampleAt = now;
  }
  w.histDirty = true;
}

function push(w, gpu, vram) {
  w.gpu[w.head] = gpu;
  w.vram[w.head] = vram;
  w.head = (w.head + 1) % HISTORY;
  if (w.len < HISTORY) w.len++;
}

function applyQueen(st, ev, now) {
  if (typeof ev.queen_id === 'string' && ev.queen_id) setQueen(st, ev.queen_id, now);
  st.queenEvent = ev;
  st.queenEventAt = now;
  st.queenHives = new Set(Array.isArray(ev.hive_ids) ? ev.hive_ids : []);
  st.dirty.summary = true;
  st.dirty.queues = true;
  for (const h of st.hives.values()) updateStatus(st, h, now);
  if (Array.isArray(ev.migrations)) applyMigrations(st, ev.migrations, now);
}

// Migrations remembered as logged, well over the queen's list (20): one
// that dropped out of it never comes back, so older keys can go.
const MAX_MIGRATIONS_SEEN = 200;

// applyMigrations logs each migration the queen lists that this page has not
// logged yet, those in the first event after the page loads included: they
// happened a moment ago.
function applyMigrations(st, list, now) {
  for (const m of list) {
    if (!m || typeof m !== 'object') continue;
    const key = `${m.at}|${m.entry}|${m.from}`;
    if (st.migrationsSeen.has(key)) continue;
    st.migrationsSeen.add(key);
    if (st.migrationsSeen.size > MAX_MIGRATIONS_SEEN) {
      st.migrationsSeen.delete(st.migrationsSeen.values().next().value);
    }
    if (m.result === 'failed') logEvent(st, now, migrationText(m), 'warn');
    else logEvent(st, now, migrationText(m), 'info');
  }
}

// migrationText says what became of a stream whose worker broke off.
function migrationText(m) {
  const tokens = `${+m.tokens || 0} tokens`;
  if (m.result === 'failed') {
    const why = firstLine(m.reason);
    return `stream lost: ${m.model} on ${m.from} after ${tokens}${why ? `: ${why}` : ''}`;
  }
  const pause = +m.pause_ms > 0 ? `, paused ${(m.pause_ms / 1000).toFixed(1)} s` : '';
  return `stream moved: ${m.model} from ${m.from} to ${m.to} after ${tokens}${pause}`;
}

// applyCluster takes a /v1/cluster document. Members and queues come from it;
// hives only where the feed has not reported them (the feed is fresher).
export function applyCluster(st, doc, from, now) {
  if (!doc || typeof doc !== 'object') return;
  st.cluster = doc;
  st.clusterAt = now;
  st.clusterFrom = from;
  st.dirty.members = true;
  st.dirty.summary = true;
  if (!st.queenEvent) st.dirty.queues = true;
  if (doc.queen) setQueen(st, doc.queen, now);
  const listed = new Set();
  for (const hv of Array.isArray(doc.hives) ? doc.hives : []) {
    if (!hv || typeof hv.hive_id !== 'string') continue;
    listed.add(hv.hive_id);
    const h = st.hives.get(hv.hive_id);
    if (h && h.reported) continue;
    if (hv.online && Array.isArray(hv.workers)) {
      applyTelemetry(st, hv.hive_id, hv.workers, hv.leases, now, hv);
      continue;
    }
    const hh = hive(st, hv.hive_id, now);
    hh.docOnline = false;
    hh.docLastSeen = hv.last_seen || '';
    if (Array.isArray(hv.workers) && hh.workers.size === 0) {
      for (const s of hv.workers) {
        const key = `${s.group}/${s.instance}`;
        const w = newWorker(key);
        w.s = s;
        w.slots = s.slots > 0 ? s.slots : 1;
        hh.workers.set(key, w);
      }
      hh.orderChanged = true;
    }
    countWorkers(hh);
    updateStatus(st, hh, now);
    st.dirty.hives.add(hh);
  }
  // The queen forgot these: drop those we also lost long ago.
  if (!doc.hives_error) {
    for (const h of st.hives.values()) {
      if (!listed.has(h.id) && h.status === 'offline' && now - h.lastSeen > FORGET_MS) removeHive(st, h);
    }
  }
}

function removeHive(st, h) {
  st.hives.delete(h.id);
  h.removed = true;
  st.dirty.hives.add(h);
  st.dirty.summary = true;
}

export function hiveStatus(st, h, now) {
  if (!h.reported) return 'offline';
  // Offline holds until the hive reports again (the grace after a queen
  // change must not bring it back to "stale").
  if (h.status === 'offline' && h.offlineAt >= h.lastSeen) return 'offline';
  const age = now - h.lastSeen;
  if (age > OFFLINE_MS) return 'offline';
  // The queen no longer counts it, and it has not reported since.
  if (st.queenEvent && st.queenEventAt > h.lastSeen && now - st.queenAt > QUEEN_GRACE_MS &&
      !st.queenHives.has(h.id)) return 'offline';
  if (age > STALE_MS) return 'stale';
  return 'online';
}

function updateStatus(st, h, now) {
  const s = hiveStatus(st, h, now);
  if (s === h.status) return;
  const was = h.status;
  h.status = s;
  if (s === 'offline') h.offlineAt = now;
  st.dirty.hives.add(h);
  st.dirty.summary = true;
  for (const w of h.workers.values()) w.dirty = true;
  if (quiet(st, now) || !h.reported) return;
  if (s === 'stale') logEvent(st, now, `hive ${h.id} stale: no report for ${(STALE_MS / 1000).toFixed(1)} s`, 'warn');
  else if (s === 'offline') logEvent(st, now, `hive ${h.id} offline`, 'bad');
  else if (was !== 'online') logEvent(st, now, `hive ${h.id} online`, 'ok');
}

// tick re-derives what time alone changes: hive freshness, gone workers to
// drop, stale counters on screen. Called a few times a second.
export function tick(st, now) {
  for (const h of st.hives.values()) {
    updateStatus(st, h, now);
    if (h.status !== 'online') st.dirty.hives.add(h); // "no report for N s"
    if (h.managed.some((m) => m.state === 'loading')) st.dirty.hives.add(h); // "loading 12 s"
    for (const w of h.workers.values()) {
      if (w.gone && now - w.goneAt > GONE_KEEP_MS) {
        h.workers.delete(w.key);
        h.orderChanged = true;
        st.dirty.hives.add(h);
        countWorkers(h);
      }
    }
    if (h.status === 'offline' && h.reported && now - h.lastSeen > FORGET_MS) removeHive(st, h);
  }
  st.dirty.conn = true;
  st.dirty.summary = true;
}

// workerState is what a row says about a worker, with the reason shown on
// hover: the state and reason the queen sent in the last report. Only what
// no message can say is the page's own: a worker missing from its hive's
// latest report is gone, and a hive this page has stopped hearing from is
// offline.
export function workerState(h, w) {
  if (w.gone) return ['gone', 'missing from the hive’s latest report'];
  if (h.status === 'offline') return ['offline', 'the hive stopped reporting'];
  const s = w.s || {};
  const why = typeof s.state_reason === 'string' ? s.state_reason : '';
  // The queen calls a worker saturated both when all its slots are busy
  // (normal full load: requests wait their turn) and when its GPU is busy
  // outside rbee. Only the second is trouble; the first is shown as full.
  if (s.state === 'saturated' && w.busy >= w.slots) return ['full', why];
  if (WORKER_STATES.has(s.state)) return [s.state, why];
  if (!s.state) return ['unknown', 'the queen sent no state'];
  return ['unknown', `the queen sent a state this page does not know: ${s.state}`];
}

// summary: the cluster figures, from the queen event when there is one, else
// counted from what this page knows.
export function summary(st, now) {
  const ev = st.queenEvent;
  let hivesKnown = 0;
  let hivesOn = 0;
  let hivesOff = 0;
  let workersOn = 0;
  let sim = 0;
  for (const h of st.hives.values()) {
    hivesKnown++;
    if (h.status !== 'offline') {
      hivesOn++;
      workersOn += h.live;
    } else {
      hivesOff++;
    }
    sim += h.sim;
  }
  const members = st.cluster && Array.isArray(st.cluster.members) ? st.cluster.members : [];
  const queues = currentQueues(st);
  const qm = members.find((m) => m.name === st.queen);
  return {
    queen: st.queen,
    queenAt: st.queenAt,
    queenChanged: !!st.queenChanged,
    queenAddr: qm && typeof qm.http_addr === 'string' ? qm.http_addr : '',
    queenEventAge: ev ? now - st.queenEventAt : -1,
    membersAlive: members.filter((m) => m.status === 'alive').length,
    members: members.length,
    hivesOnline: ev ? ev.hives_online : hivesOn,
    hivesAvailable: ev ? ev.hives_available : -1,
    hivesKnown,
    hivesOffline: hivesOff,
    workersOnline: ev ? ev.workers_online : workersOn,
    workersAvailable: ev ? ev.workers_available : -1,
    requestsPerS: ev ? ev.requests_per_s || 0 : st.cluster ? st.cluster.requests_per_s || 0 : 0,
    waiting: queues.reduce((a, q) => a + (q.waiting || 0), 0),
    models: queues.length,
    simulated: sim,
  };
}

export function currentQueues(st) {
  if (st.queenEvent) return Array.isArray(st.queenEvent.queues) ? st.queenEvent.queues : [];
  return st.cluster && Array.isArray(st.cluster.queues) ? st.cluster.queues : [];
}

// feedCandidates lists where the feed may be read, in the order to try: the
// page's own node, then the members the last /v1/cluster named, alive first.
export function feedCandidates(st, origin) {
  const out = [origin];
  const members = st.cluster && Array.isArray(st.cluster.members) ? st.cluster.members : [];
  const sorted = [...members].sort((a, b) => (a.status === 'alive' ? 0 : 1) - (b.status === 'alive' ? 0 : 1));
  for (const m of sorted) {
    if (typeof m.http_addr === 'string' && m.http_addr && !out.includes(m.http_addr)) out.push(m.http_addr);
  }
  return out;
}
