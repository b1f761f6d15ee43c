// rbee dashboard: wiring. The engine (engine.js: the feed, /v1/cluster, the
// model) runs in a Web Worker (worker.js), off this thread, and sends an
// update at most every 100 ms, and only after this page rendered the last:
// the summary, and the hives on or near the screen. This thread keeps them in
// a mirror (view.js) and renders what changed once per animation frame. A
// page that cannot start a worker runs the engine here, with the same
// messages.

import { createView, newMirror } from './view.js';

const origin = location.host;
// A page opened with ?token=... (a dashboard on another origin, or a node
// with a cluster key reached from beyond loopback) passes it on.
const token = new URLSearchParams(location.search).get('token') || '';

const st = newMirror(Date.now());
const view = createView(st, origin);

let framePending = false;
// An update came in since the last render: once rendered, the engine may
// send the next.
let updated = false;
let firstData = false;
let allRows = false;
function schedule() {
  if (framePending) return;
  framePending = true;
  requestAnimationFrame(flush);
}
view.setScheduler(schedule);

function flush() {
  framePending = false;
  const r = view.render(Date.now());
  if (r.window) engine.post({ type: 'window', ids: r.window });
  if (updated) {
    updated = false;
    engine.post({ type: 'ready' });
  }
  if (!firstData && r.shown > 0 && !r.waiting) {
    firstData = true;
    performance.mark('rbee:first-data');
  }
  if (r.more) schedule();
  else if (firstData && !allRows && !r.waiting) {
    allRows = true;
    performance.mark('rbee:all-rows');
  }
}

function onUpdate(u) {
  view.apply(u);
  updated = true;
  schedule();
}

// startEngine starts the engine in a worker, or here where a worker cannot
// start (no Worker, no module workers, a policy that forbids them): then
// the engine is told again what the page had asked of the worker.
function startEngine() {
  let local = null;
  let worker = null;
  async function fallback() {
    if (local) return;
    local = {};
    if (worker) worker.terminate();
    worker = null;
    const { createEngine } = await import('./engine.js');
    local = createEngine({ origin, token, post: (u) => queueMicrotask(() => onUpdate(u)) });
    local.handle({ type: 'filter', q: st.filter });
    local.handle({ type: 'window', ids: view.dataIds() });
    local.handle({ type: 'ready' });
  }
  try {
    worker = new Worker('/ui/worker.js', { type: 'module' });
    let heard = false;
    worker.onmessage = (e) => {
      heard = true;
      onUpdate(e.data);
    };
    worker.onerror = (e) => {
      if (heard) return;
      e.preventDefault();
      fallback();
    };
    worker.postMessage({ type: 'init', origin, token });
    worker.postMessage({ type: 'ready' });
  } catch {
    fallback();
  }
  return {
    post(m) {
      if (worker) worker.postMessage(m);
      else if (local && local.handle) local.handle(m);
    },
  };
}

const engine = startEngine();
addEventListener('pagehide', () => engine.post({ type: 'close' }));

// --- filter

const filter = document.getElementById('filter');
filter.addEventListener('input', () => {
  st.filter = filter.value.trim().toLowerCase();
  st.dirty.filter = true;
  engine.post({ type: 'filter', q: st.filter });
  schedule();
});
