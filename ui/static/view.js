// The view: keeps what the engine (engine.js) sends in a mirror of the state
// (newMirror), and turns its dirty marks into DOM changes, once per animation
// frame. The mirror holds whole only the hives on or near the screen; of the
// others it knows the names and worker counts. Rows and cards are keyed (a
// hive's section, a worker's row, a member, a queue) and made once;
// afterwards only a text or attribute that differs from what is on screen is
// written. All data goes in through textContent or attributes, never as HTML.

import * as fmt from './format.js';
import { workerState } from './model.js';
import { drawSpark } from './spark.js';

const MAX_EVENTS = 200;

// newMirror is the page's side of the state: what the engine sent, and the
// view's own marks.
export function newMirror(now) {
  return {
    conn: { state: 'connecting', target: '', delay: 0, attempt: 0, since: now, lastMsgAt: 0 },
    sum: null, // the engine's summary, with known, hasCluster, clusterAt
    members: { list: [], has: false, queen: '', from: '', at: 0 },
    queues: [],
    events: [],
    hives: new Map(), // hive_id -> mirror hive (mirrorHive)
    filter: '',
    dirty: { summary: true, members: true, queues: true, events: false, conn: true, filter: false, hives: new Set() },
  };
}

function mirrorHive(id) {
  return {
    id,
    n: 0, // its worker count, for a height guess
    loaded: false, // the engine sent it whole
    status: 'offline',
    reported: false,
    lastSeen: 0,
    docLastSeen: '',
    leases: 0,
    catalog: [],
    gpus: [],
    managed: [],
    workers: new Map(), // "group/instance" -> worker, while loaded
    orderChanged: true,
    height: 0,
    collapsed: false,
    el: null,
    drawn: false, // its section was rendered with its data
  };
}

// set writes text only when it changed; the last value rides on the element.
function set(el, v) {
  if (el._t !== v) {
    el._t = v;
    el.textContent = v;
  }
}

function attr(el, name, v) {
  const k = `_a${name}`;
  if (el[k] !== v) {
    el[k] = v;
    if (v === null) el.removeAttribute(name);
    else el.setAttribute(name, v);
  }
}

function scale(el, f) {
  const v = Math.round(Math.min(1, Math.max(0, f || 0)) * 1000) / 1000;
  if (el._s !== v) {
    el._s = v;
    el.style.transform = `scaleX(${v})`;
  }
}

function fields(root) {
  const f = {};
  for (const el of root.querySelectorAll('[data-f]')) f[el.dataset.f] = el;
  return f;
}

// A hive's height before it has been measured: its header, and a row per
// worker; a measured hive of as many workers is a better guess. Sections
// are HIVE_GAP_PX apart (style.css's .hive margin).
const HIVE_GUESS_PX = 44;
const ROW_GUESS_PX = 33;
const HIVE_GAP_PX = 8;

function byId(id) {
  return document.getElementById(id);
}

export function createView(st, origin) {
  const hivesEl = byId('hives');
  const emptyEl = byId('empty');
  const tplHive = byId('tpl-hive').content.firstElementChild;
  const tplWorker = byId('tpl-worker').content.firstElementChild;
  const tplMember = byId('tpl-member').content.firstElementChild;
  const tplQueue = byId('tpl-queue').content.firstElementChild;
  const tplGPU = byId('tpl-gpu').content.firstElementChild;
  const tplManaged = byId('tpl-managed').content.firstElementChild;
  const tplEntry = byId('tpl-entry').content.firstElementChild;
  const tiles = {};
  for (const t of ['queen', 'members', 'hives', 'workers', 'rps', 'queue']) tiles[t] = fields(byId(`t-${t}`));
  const membersEl = byId('members');
  const queuesEl = byId('queues');
  const eventsEl = byId('events');
  const memberRows = new Map();
  const queueRows = new Map();
  let lastEventId = 0;

  // Sparklines are drawn only for rows on (or near) the screen; a row that
  // scrolls in is drawn then. The observer also gives each canvas's size.
  const visible = new Set();
  const byCanvas = new WeakMap();
  const io = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const w = byCanvas.get(e.target);
      if (!w) continue;
      if (e.isIntersecting) {
        w.sparkW = e.boundingClientRect.width;
        w.sparkH = e.boundingClientRect.height;
        visible.add(w);
        w.histDirty = true;
      } else {
        visible.delete(w);
      }
    }
    schedule();
  }, { rootMargin: '200px 0px' });
  let schedule = () => {};

  // Only the hives on or near the screen are in the DOM (a cluster of 1000
  // hives would otherwise keep 8000 rows up to date, and lay them out, every
  // second): #hives is padded above and below by the heights of the hives
  // left out, as last measured (or guessed from hives of as many workers),
  // so the page scrolls as if they were all there. Scroll anchoring keeps
  // what is on screen still when a guess is corrected.
  let order = []; // the hives to list (the filter's), sorted, as the engine sent
  // The hives whose whole state the view asked for: those in the DOM and
  // as many again beyond, so that a scroll finds them there.
  let dataIds = new Set();
  let dataKey = '';
  const shown = new Set(); // hives whose section is in the DOM
  const guess = new Map(); // worker count -> a measured height
  let padTop = -1;
  let padBottom = -1;
  addEventListener('scroll', () => schedule(true), { passive: true });

  let colors = readColors();
  const dark = matchMedia('(prefers-color-scheme: dark)');
  dark.addEventListener('change', () => {
    colors = readColors();
    for (const w of visible) w.histDirty = true;
    schedule();
  });
  addEventListener('resize', () => {
    for (const w of visible) {
      w.sparkW = 0;
      w.histDirty = true;
    }
    // Heights change with the width (phones show workers as cards).
    guess.clear();
    for (const h of st.hives.values()) h.height = 0;
    schedule(true);
  });

  function readColors() {
    const cs = getComputedStyle(document.documentElement);
    const v = (n) => cs.getPropertyValue(n).trim();
    return { gpu: v('--gpu'), gpuFill: v('--gpu-fill'), vram: v('--vram'), grid: v('--line') };
  }

  // --- connection and summary

  function renderConn(now) {
    const c = st.conn;
    const el = byId('conn');
    attr(el, 'data-state', c.state === 'live' && now - c.lastMsgAt > 5000 ? 'quiet' : c.state);
    const via = c.target === origin ? c.target : `${c.target} (page from ${origin})`;
    let text;
    switch (c.state) {
      case 'live':
        text = now - c.lastMsgAt > 5000 && c.lastMsgAt ? `live · ${via} · no data for ${fmt.ago(now - c.lastMsgAt)}` : `live · ${via}`;
        break;
      case 'waiting':
        text = `reconnecting to ${c.target} in ${fmt.ago(Math.max(0, c.since + c.delay - now))} (try ${c.attempt})`;
        break;
      default:
        text = `connecting to ${c.target}…`;
    }
    set(byId('conn-text'), text);
  }

  function renderSummary(now) {
    const s = st.sum;
    if (!s) return;
    // Before the first queen event or /v1/cluster document the page knows
    // nothing of a queen: that is no fault to show in red.
    const known = s.known;
    set(tiles.queen.v, s.queen || (known ? 'none' : '–'));
    attr(tiles.queen.v.parentElement, 'data-warn', !known || (s.queen && s.queenEventAge < 8000) ? null : '');
    set(tiles.queen.s, !known && !s.queen ? (st.conn.state === 'live' ? 'waiting for the queen…' : 'connecting…') :
      !s.queen ? 'no queen elected' :
      s.queenEventAge > 8000 ? `no queen event for ${fmt.ago(s.queenEventAge)}` :
      [s.queenChanged ? `since ${fmt.clock(s.queenAt)}` : '', s.queenAddr].filter(Boolean).join(' · ') || 'elected');
    set(tiles.members.v, s.members ? `${s.membersAlive} / ${s.members}` : '–');
    const docAge = now - s.clusterAt;
    set(tiles.members.s, !s.hasCluster ? 'no /v1/cluster yet' : docAge > 15000 ? `alive · as of ${fmt.clock(s.clusterAt)}` : 'alive');
    set(tiles.hives.v, `${s.hivesOnline}`);
    set(tiles.hives.s, ['online', s.hivesAvailable >= 0 ? `${s.hivesAvailable} available` : '',
      s.hivesOffline > 0 ? `${s.hivesOffline} offline` : ''].filter(Boolean).join(' · '));
    set(tiles.workers.v, `${s.workersOnline}`);
    set(tiles.workers.s, s.workersAvailable >= 0 ? `online · ${s.workersAvailable} available` : 'online');
    set(tiles.rps.v, fmt.num(s.requestsPerS, 1));
    set(tiles.rps.s, 'leases granted by the queen');
    set(tiles.queue.v, `${s.waiting}`);
    set(tiles.queue.s, s.models === 1 ? 'requests · 1 model' : `requests · ${s.models} models`);
    const sim = byId('sim-note');
    sim.hidden = s.simulated === 0;
    set(sim, s.simulated === 1 ? '1 simulated worker' : `${s.simulated} simulated workers`);
    const title = s.queen ? `rbee · ${s.hivesOnline} hives · queen ${s.queen}` : 'rbee';
    if (document.title !== title) document.title = title;
    set(emptyEl, st.conn.state === 'live' ? 'No hive has reported yet.' : 'Waiting for the feed…');
    emptyEl.hidden = s.hivesKnown > 0;
  }

  // --- members, queues, events

  function renderMembers(now) {
    const doc = st.members;
    const members = [...doc.list];
    members.sort((a, b) => fmt.compareIDs(a.name, b.name));
    const seen = new Set();
    for (const m of members) {
      if (typeof m.name !== 'string') continue;
      seen.add(m.name);
      let r = memberRows.get(m.name);
      if (!r) {
        const row = tplMember.cloneNode(true);
        row.dataset.member = m.name;
        r = { row, f: fields(row) };
        memberRows.set(m.name, r);
      }
      membersEl.appendChild(r.row); // keeps sorted order; a no-op move when in place
      const status = typeof m.status === 'string' ? m.status : 'unknown';
      set(r.f.status, status);
      attr(r.f.status, 'data-s', status);
      set(r.f.name, m.name);
      r.f.queen.hidden = m.name !== doc.queen;
      set(r.f.roles, Array.isArray(m.roles) ? m.roles.join(', ') : '');
      set(r.f.addr, typeof m.http_addr === 'string' ? m.http_addr : '');
      attr(r.f.addr, 'title', `gossip ${m.gossip_addr || '?'} · version ${m.version || '?'} · queen priority ${m.queen_priority ?? 0}`);
    }
    for (const [name, r] of memberRows) {
      if (!seen.has(name)) {
        r.row.remove();
        memberRows.delete(name);
      }
    }
    const none = membersEl.querySelector('.none');
    if (none) none.hidden = memberRows.size > 0;
    set(byId('members-note'), doc.has ? `from ${doc.from} at ${fmt.clock(doc.at)}` : '');
  }

  function renderQueues() {
    const qs = st.queues.filter((q) => q && typeof q.model === 'string');
    qs.sort((a, b) => fmt.compareIDs(a.model, b.model));
    const seen = new Set();
    for (const q of qs) {
      seen.add(q.model);
      let r = queueRows.get(q.model);
      if (!r) {
        const row = tplQueue.cloneNode(true);
        row.dataset.model = q.model;
        r = { row, f: fields(row) };
        queueRows.set(q.model, r);
      }
      queuesEl.appendChild(r.row);
      set(r.f.model, q.model);
      attr(r.f.model, 'title', q.model);
      set(r.f.waiting, `${q.waiting || 0} waiting`);
      attr(r.f.waiting, 'data-hot', q.waiting > 0 ? '' : null);
      set(r.f.leases, `${q.leases || 0} / ${q.slots || 0}`);
      scale(r.f.bar, q.slots > 0 ? q.leases / q.slots : 0);
      // The model lifecycle (a queen before it sends none of this).
      const state = typeof q.state === 'string' ? q.state : '';
      if (r.f.state.hidden === !!state) r.f.state.hidden = !state;
      set(r.f.state, state);
      attr(r.f.state, 'data-s', state || null);
      const note = queueNote(q);
      if (r.f.note.hidden === !!note) r.f.note.hidden = !note;
      set(r.f.note, note);
      attr(r.f.note, 'title', note || null);
    }
    for (const [model, r] of queueRows) {
      if (!seen.has(model)) {
        r.row.remove();
        queueRows.delete(model);
      }
    }
    const none = queuesEl.querySelector('.none');
    if (none) none.hidden = queueRows.size > 0;
  }

  // queueNote: a model's expected wait, where it is loading, why it cannot
  // be served or where it could start.
  function queueNote(q) {
    const parts = [];
    if (q.eta_ms > 0) parts.push(`~${fmt.secs(q.eta_ms)} wait`);
    if (typeof q.loading_hive === 'string' && q.loading_hive) {
      parts.push(`loading on ${q.loading_hive} for ${fmt.uptime((q.loading_ms || 0) / 1000)}`);
    }
    const reason = fmt.oneLine(q.reason);
    if (q.state === 'unavailable') parts.push(reason || 'no hive can start it');
    else if (reason) parts.push(reason);
    if (q.state === 'available' && Array.isArray(q.hives) && q.hives.length) parts.push(`can start on ${q.hives.join(', ')}`);
    return parts.join(' · ');
  }

  function renderEvents() {
    for (const ev of st.events) {
      if (ev.id <= lastEventId) continue;
      lastEventId = ev.id;
      const li = document.createElement('li');
      li.dataset.level = ev.level;
      const t = document.createElement('time');
      t.textContent = fmt.clock(ev.at);
      const span = document.createElement('span');
      span.textContent = ev.text;
      li.append(t, span);
      eventsEl.prepend(li);
    }
    while (eventsEl.childElementCount > 200) eventsEl.lastElementChild.remove();
  }

  // --- hives and workers

  // makeHive builds a hive's section; showWindow puts it in place.
  function makeHive(h) {
    const sec = tplHive.cloneNode(true);
    const f = fields(sec);
    sec.dataset.hive = h.id;
    set(f.id, h.id);
    attr(f.id, 'title', h.id);
    const tog = sec.querySelector('.tog');
    tog.setAttribute('aria-expanded', String(!h.collapsed));
    f.rows.hidden = !!h.collapsed;
    tog.addEventListener('click', () => {
      h.collapsed = !h.collapsed;
      tog.setAttribute('aria-expanded', String(!h.collapsed));
      f.rows.hidden = h.collapsed;
      if (!h.collapsed) for (const w of h.workers.values()) w.dirty = true;
      st.dirty.hives.add(h);
      schedule(true);
    });
    h.el = { sec, f };
    // Until its data comes (a frame or so later), the section keeps the
    // height it was guessed at, so that the page does not shrink beneath
    // the reader and then grow back, moving what is on screen.
    if (!h.loaded) sec.style.minHeight = `${heightOf(h) - HIVE_GAP_PX}px`;
    h.orderChanged = true;
    for (const w of h.workers.values()) w.dirty = true;
  }

  function dropHive(h) {
    if (!h.el) return;
    for (const w of h.workers.values()) dropRow(w);
    h.el.sec.remove();
    h.el = null;
    h.drawn = false;
    shown.delete(h);
  }

  function renderHive(h, now) {
    if (!h.loaded) return; // its section waits for the engine's data
    const { sec, f } = h.el;
    if (!h.drawn && sec.style.minHeight) sec.style.minHeight = '';
    h.drawn = true;
    attr(sec, 'data-status', h.status);
    set(f.status, h.status);
    let busy = 0;
    let slots = 0;
    let live = 0;
    let sim = 0;
    for (const w of h.workers.values()) {
      if (w.gone) continue;
      live++;
      busy += w.busy;
      slots += w.slots;
      if (w.s && w.s.simulated) sim++;
    }
    const parts = [live === 1 ? '1 worker' : `${live} workers`];
    if (live) parts.push(`${busy} / ${slots} slots busy`);
    if (h.leases > busy) parts.push(`${h.leases} leases`);
    if (sim) parts.push(`${sim} simulated`);
    const loading = h.managed.filter((m) => m.state === 'loading').length;
    if (loading) parts.push(`${loading} loading`);
    const failed = h.catalog.filter((c) => c.failures > 0).length;
    if (failed) parts.push(`${failed} failed to start`);
    set(f.meta, parts.join(' · '));
    renderLife(h, now);
    let seen = '';
    if (h.status !== 'online') {
      if (h.reported) seen = `no report for ${fmt.ago(now - h.lastSeen)}`;
      else if (h.docLastSeen) seen = `last report ${fmt.clock(Date.parse(h.docLastSeen))}`;
    }
    set(f.seen, seen);

    if (h.orderChanged) {
      h.orderChanged = false;
      const keys = [...h.workers.keys()].sort(fmt.compareIDs);
      const rows = f.rows;
      let i = 0;
      for (const k of keys) {
        const w = h.workers.get(k);
        if (!w.el) makeRow(w);
        if (rows.children[i] !== w.el.row) rows.insertBefore(w.el.row, rows.children[i] || null);
        i++;
      }
      while (rows.children.length > keys.length) {
        const extra = rows.lastElementChild;
        const w = extra._w;
        if (w) dropRow(w);
        else extra.remove();
      }
      filterRows(h);
    }
    if (h.collapsed) return;
    for (const w of h.workers.values()) {
      if (w.dirty) renderWorker(h, w);
    }
  }

  // --- a hive's model lifecycle: GPUs, workers rbee started, catalog

  function renderLife(h, now) {
    const f = h.el.f;
    const hide = !!h.collapsed || (h.gpus.length + h.managed.length + h.catalog.length === 0);
    if (f.life.hidden !== hide) f.life.hidden = hide;
    if (hide) return;
    sync(f.gpusBox, f.gpus, h.gpus, tplGPU, (row, g, x) => {
      set(g.name, `GPU ${x.index ?? '?'}${x.name ? ` · ${x.name}` : ''}`);
      attr(g.name, 'title', x.name || null);
      const used = x.used_vram_mb || 0;
      const total = x.total_vram_mb || 0;
      set(g.vram, fmt.vram(used, total));
      // Reserved VRAM is promised to workers still loading: placement
      // counts it as used, and so does the bar.
      const vf = total > 0 ? (used + (x.reserved_mb || 0)) / total : 0;
      scale(g.bar, vf);
      attr(g.bar, 'data-hot', vf >= 0.95 ? '' : null);
      set(g.util, `${fmt.pct(+x.util_pct || 0)} util`);
      set(g.reserved, x.reserved_mb > 0 ? `${fmt.mib(x.reserved_mb)} reserved` : '');
      const simulated = !!x.simulated;
      if (g.sim.hidden === simulated) g.sim.hidden = !simulated;
      attr(row, 'data-sim', simulated ? '' : null);
    });
    const managed = [...h.managed].sort((a, b) => fmt.compareIDs(`${a.instance}`, `${b.instance}`));
    sync(f.managedBox, f.managed, managed, tplManaged, (row, g, m) => {
      const state = typeof m.state === 'string' ? m.state : 'unknown';
      attr(row, 'data-state', state);
      attr(g.state, 'data-s', state);
      const since = Date.parse(m.since);
      // The time so far, on this browser's clock against the hive's.
      // A worker waiting for its model's files says how far the copy is.
      const stage = typeof m.stage === 'string' && m.stage ? m.stage : '';
      set(g.state, state === 'loading' && stage ? stage
        : state === 'loading' && Number.isFinite(since) ? `loading ${fmt.uptime(Math.max(0, now - since) / 1000)}` : state);
      attr(g.state, 'title', Number.isFinite(since) ? `started ${fmt.clock(since)}` : null);
      set(g.name, `models/${m.instance}`);
      set(g.model, typeof m.model === 'string' ? m.model : '');
      attr(g.model, 'title', m.engine ? `${m.model} (${m.engine})` : null);
      const gpus = Array.isArray(m.gpus) && m.gpus.length ? `GPU ${m.gpus.join(', ')}` : '';
      set(g.meta, [gpus, m.vram_mb > 0 ? fmt.mib(m.vram_mb) : '', `${m.leases || 0} leases`,
        m.started_by ? `by ${m.started_by}` : ''].filter(Boolean).join(' · '));
    });
    const catalog = [...h.catalog].sort((a, b) => fmt.compareIDs(`${a.name}`, `${b.name}`));
    sync(f.catalogBox, f.catalog, catalog, tplEntry, (row, g, c) => {
      set(g.name, typeof c.name === 'string' ? c.name : '');
      const vram = c.vram_mb > 0 ? `${fmt.mib(c.vram_mb)}${c.vram_source ? ` ${c.vram_source}` : ''}` : '';
      set(g.meta, [c.engine, factsText(c.facts), c.bytes > 0 ? fmt.gib(c.bytes) : '', c.slots > 0 ? `${c.slots} slots` : '', vram,
        c.load_ms > 0 ? `loads in ${fmt.secs(c.load_ms)}` : ''].filter(Boolean).join(' · '));
      attr(g.meta, 'title', factsTitle(c.facts));
      const parts = [];
      let status = 'ok';
      if (c.unavailable) {
        parts.push(`cannot start: ${fmt.oneLine(c.unavailable)}`);
        status = 'unavailable';
      }
      if (c.failures > 0) {
        const at = Date.parse(c.failed_at);
        const when = Number.isFinite(at) ? `, ${fmt.ago(Math.max(0, now - at))} ago` : '';
        parts.push(`failed ${c.failures}×${when}: ${fmt.oneLine(c.fail_reason) || 'no reason given'}`);
        if (status === 'ok') status = 'failed';
      }
      set(g.status, parts.length ? parts.join(' · ') : 'available');
      attr(g.status, 'title', c.fail_reason || c.unavailable || null);
      attr(row, 'data-status', status);
      const simulated = !!c.simulated;
      if (g.sim.hidden === simulated) g.sim.hidden = !simulated;
    });
  }

  // sync makes box hold one row of tpl per item, filled by fill(row,
  // fields, item); rows are kept and refilled, and box's section is hidden
  // while there are none.
  function sync(section, box, items, tpl, fill) {
    while (box.childElementCount > items.length) box.lastElementChild.remove();
    while (box.childElementCount < items.length) {
      const row = tpl.cloneNode(true);
      row._f = fields(row);
      box.appendChild(row);
    }
    items.forEach((it, i) => {
      const row = box.children[i];
      fill(row, row._f, it);
    });
    const hide = items.length === 0;
    if (section.hidden !== hide) section.hidden = hide;
  }

  function makeRow(w) {
    const row = tplWorker.cloneNode(true);
    const f = fields(row);
    row.dataset.worker = w.key;
    row._w = w;
    set(f.name, w.key);
    // Narrow screens cut a long name short; the whole of it is on hover.
    attr(f.name, 'title', w.key);
    w.el = { row, f };
    byCanvas.set(f.spark, w);
    io.observe(f.spark);
  }

  function dropRow(w) {
    if (!w.el) return;
    io.unobserve(w.el.f.spark);
    visible.delete(w);
    w.el.row.remove();
    w.el = null;
  }

  function renderWorker(h, w) {
    w.dirty = false;
    if (!w.el) return;
    const { row, f } = w.el;
    const s = w.s || {};
    const [state, why] = workerState(h, w);
    attr(row, 'data-state', state);
    set(f.state, state);
    attr(f.state, 'title', why);
    const simulated = !!s.simulated;
    if (f.sim.hidden === simulated) f.sim.hidden = !simulated;
    attr(row, 'data-sim', simulated ? '' : null);
    const model = typeof s.model === 'string' && s.model !== '' ? s.model : null;
    // An Ollama serves every model it has installed; the engine and its
    // version follow in brackets where the worker's API tells them.
    const models = Array.isArray(s.models) && s.models.length > 1 ? s.models.join(', ') : model;
    const engine = typeof s.engine === 'string' && s.engine !== '' ? ` (${s.engine})` : '';
    set(f.model, (models ?? 'unknown') + engine);
    attr(f.model, 'data-unknown', model === null ? '' : null);
    attr(f.model, 'title', model ?? 'model not known: the worker answers no /v1/models and its command line names none');
    set(f.pid, `${s.pid ?? '–'}`);
    set(f.uptime, fmt.uptime(s.uptime_s));
    const gpu = +s.gpu_util_pct || 0;
    set(f.gpu, fmt.pct(gpu));
    scale(f.gpuBar, gpu / 100);
    // Saturated with slots free: the queen found the GPU busy outside rbee.
    attr(f.gpuBar, 'data-hot', state === 'saturated' && w.busy < w.slots ? '' : null);
    set(f.vram, fmt.vram(s.vram_mb || 0, s.total_vram_mb || 0));
    const vf = s.total_vram_mb > 0 ? s.vram_mb / s.total_vram_mb : 0;
    scale(f.vramBar, vf);
    attr(f.vramBar, 'data-hot', vf >= 0.95 ? '' : null);
    set(f.cpu, fmt.pct(+s.cpu_pct || 0));
    set(f.rss, fmt.mib(s.rss_mb || 0));
    set(f.io, `${fmt.rate(s.io_r_mb_s)} / ${fmt.rate(s.io_w_mb_s)}`);
    set(f.slots, `${w.busy} / ${w.slots}`);
  }

  function matches(w, q) {
    if (w.key.toLowerCase().includes(q)) return true;
    const m = w.s && typeof w.s.model === 'string' ? w.s.model.toLowerCase() : 'unknown';
    return m.includes(q);
  }

  // filterRows hides the rows of a listed hive that the filter leaves out.
  function filterRows(h) {
    if (!h.el) return;
    const q = st.filter;
    const all = !q || h.id.toLowerCase().includes(q);
    for (const w of h.workers.values()) {
      if (!w.el) continue;
      const show = all || matches(w, q);
      if (w.el.row.hidden === show) w.el.row.hidden = !show;
    }
  }

  function heightOf(h) {
    return h.height || guess.get(h.n) || HIVE_GUESS_PX + ROW_GUESS_PX * h.n;
  }

  // showWindow puts in the DOM the listed hives within a screen or so of
  // the viewport (#hives' top is at top, in the viewport's coordinates), in
  // order, and takes out the rest. It returns them, the height of those
  // above, the hives it added, and the hives to have whole (those and a
  // screen or so more each way).
  function showWindow(top) {
    const vh = innerHeight || 800;
    const over = Math.max(400, vh);
    const from = -top - over;
    const to = -top + vh + over;
    let y = 0;
    let first = order.length;
    let last = -1;
    let above = 0;
    const data = [];
    for (let i = 0; i < order.length; i++) {
      const hh = heightOf(order[i]);
      if (y + hh > from - over && y < to + over) data.push(order[i].id);
      if (y + hh > from && y < to) {
        if (first > i) {
          first = i;
          above = y;
        }
        last = i;
      }
      y += hh;
    }
    const want = last >= first ? order.slice(first, last + 1) : [];
    const wanted = new Set(want);
    for (const h of shown) if (!wanted.has(h)) dropHive(h);
    const added = [];
    want.forEach((h, i) => {
      if (!h.el) {
        makeHive(h);
        added.push(h);
      }
      shown.add(h);
      if (hivesEl.children[i] !== h.el.sec) hivesEl.insertBefore(h.el.sec, hivesEl.children[i] || null);
    });
    return { want, above, total: y, added, data };
  }

  // measure learns the heights of the hives in the DOM. It runs first in a
  // frame, when the layout is still clean from the last one, so that
  // reading costs no layout of its own.
  function measure() {
    for (const h of shown) {
      // A section rendered without its data yet is its header only.
      if (!h.drawn) continue;
      const hh = h.el.sec.offsetHeight + HIVE_GAP_PX;
      if (hh !== h.height) {
        h.height = hh;
        guess.set(h.workers.size, hh);
      }
    }
  }

  // pad pads #hives for the hives left out above and below the window.
  function pad(win) {
    let total = 0;
    let inside = 0;
    for (const h of order) total += heightOf(h);
    for (const h of win.want) inside += heightOf(h);
    const top = Math.round(win.above);
    const bottom = Math.max(0, Math.round(total - win.above - inside));
    if (top !== padTop) {
      padTop = top;
      hivesEl.style.paddingTop = `${top}px`;
    }
    if (bottom !== padBottom) {
      padBottom = bottom;
      hivesEl.style.paddingBottom = `${bottom}px`;
    }
  }

  function drawSparks() {
    for (const w of visible) {
      if (!w.histDirty || !w.el) continue;
      w.histDirty = false;
      const c = w.el.f.spark;
      if (!w.sparkW) {
        w.sparkW = c.clientWidth;
        w.sparkH = c.clientHeight;
      }
      drawSpark(c, w, colors, w.sparkW, w.sparkH);
    }
  }

  // merge takes a hive the engine sent whole (the fields engine.js's
  // whole() lists).
  function merge(h, x) {
    const { workers, ...rest } = x;
    Object.assign(h, rest, { loaded: true });
    const seen = new Set();
    for (const xw of workers) {
      seen.add(xw.key);
      let w = h.workers.get(xw.key);
      if (!w) {
        w = { el: null, sparkW: 0, sparkH: 0 };
        h.workers.set(xw.key, w);
        h.orderChanged = true;
      }
      Object.assign(w, xw, { dirty: true, histDirty: true });
    }
    for (const w of h.workers.values()) {
      if (!seen.has(w.key)) {
        dropRow(w);
        h.workers.delete(w.key);
        h.orderChanged = true;
      }
    }
    st.dirty.hives.add(h);
  }

  // unload forgets a hive's whole state (it is off screen, and out of the
  // DOM already).
  function unload(h) {
    dropHive(h);
    h.workers.clear();
    h.loaded = false;
    h.orderChanged = true;
  }

  return {
    setScheduler(fn) {
      schedule = fn;
    },
    // dataIds: the hives the view last asked the engine for whole.
    dataIds: () => [...dataIds],
    // apply takes an update from the engine into the mirror; the next
    // render shows it.
    apply(u) {
      const d = st.dirty;
      if (u.conn) {
        st.conn = u.conn;
        d.conn = true;
      }
      if (u.summary) {
        st.sum = u.summary;
        d.summary = true;
      }
      if (u.members) {
        st.members = u.members;
        d.members = true;
      }
      if (u.queues) {
        st.queues = u.queues;
        d.queues = true;
      }
      if (u.events && u.events.length) {
        st.events.push(...u.events);
        if (st.events.length > MAX_EVENTS) st.events.splice(0, st.events.length - MAX_EVENTS);
        d.events = true;
      }
      for (const id of u.removed || []) {
        const h = st.hives.get(id);
        if (!h) continue;
        dropHive(h);
        st.hives.delete(id);
      }
      if (u.order) {
        order = u.order.map((id, i) => {
          let h = st.hives.get(id);
          if (!h) {
            h = mirrorHive(id);
            st.hives.set(id, h);
          }
          h.n = u.sizes[i];
          return h;
        });
      }
      // A hive sent before the view asked for others is left out: the
      // engine sends it again when it is asked for.
      for (const x of u.hives || []) {
        const h = st.hives.get(x.id);
        if (h && dataIds.has(x.id)) merge(h, x);
      }
    },
    // render applies the dirty marks to the DOM, for the hives on or near
    // the screen. It returns more: render again at once (see the end);
    // waiting: a hive in the DOM waits for its data; window: the hives to
    // ask the engine for whole, when they changed (else null).
    render(now) {
      const d = st.dirty;
      // Reads before writes: where the list is, how tall its hives came out.
      const top = hivesEl.getBoundingClientRect().top;
      measure();
      if (d.conn) renderConn(now);
      if (d.summary) renderSummary(now);
      if (d.members) renderMembers(now);
      if (d.queues) renderQueues();
      if (d.events) renderEvents();
      d.conn = d.summary = d.members = d.queues = d.events = false;
      if (d.filter) {
        d.filter = false;
        for (const h of shown) filterRows(h);
      }
      const dirty = [...d.hives];
      d.hives.clear();
      const win = showWindow(top);
      let ask = null;
      const key = win.data.join('\n');
      if (key !== dataKey) {
        dataKey = key;
        const next = new Set(win.data);
        for (const id of dataIds) {
          const h = st.hives.get(id);
          if (!next.has(id) && h) unload(h);
        }
        dataIds = next;
        ask = win.data;
      }
      for (const h of win.added) {
        if (!h.loaded) continue;
        renderHive(h, now);
        filterRows(h);
      }
      for (const h of dirty) {
        if (h.el && !win.added.includes(h)) renderHive(h, now);
      }
      pad(win);
      drawSparks();
      // The hives just added were guessed at: the next frame measures
      // them and, if the guess was off, fills the screen.
      return { more: win.added.length > 0, waiting: win.want.some((h) => !h.loaded), shown: win.want.length, window: ask };
    },
  };
}

// factsText is what a model's files say, short ("llama 8.0B Q4_K_M"); ''
// when no parser read them.
function factsText(f) {
  if (!f || typeof f !== 'object') return '';
  const p = Number(f.parameters) || 0;
  const params = p >= 1e9 ? `${(p / 1e9).toFixed(1)}B` : p >= 1e6 ? `${(p / 1e6).toFixed(0)}M` : p > 0 ? `${(p / 1e3).toFixed(0)}K` : '';
  return [f.architecture, params, f.quantization].filter((x) => typeof x === 'string' && x).join(' ');
}

// factsTitle is the rest of them, for the tooltip.
function factsTitle(f) {
  if (!f || typeof f !== 'object') return null;
  const parts = [`from ${f.format}`];
  if (f.layers > 0) parts.push(`${f.layers} layers`);
  if (f.kv_heads > 0) parts.push(`${f.kv_heads} KV heads × ${f.head_dim || '?'}`);
  if (f.context_length > 0) parts.push(`trained context ${f.context_length}`);
  parts.push(f.chat_template ? 'chat template' : 'no chat template');
  if (f.estimate_mb > 0) parts.push(`needs ${f.estimate_mb} MiB (weights ${f.weights_mb || 0}, KV cache ${f.kv_cache_mb || 0})`);
  return parts.join(' · ');
}
