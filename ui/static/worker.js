// The dashboard's Web Worker: runs the engine (engine.js) off the page's
// thread. The page's first message says where it came from and its token.

import { createEngine } from './engine.js';

let engine = null;
onmessage = (e) => {
  const m = e.data;
  if (!engine) {
    if (!m || m.type !== 'init') return;
    engine = createEngine({ origin: m.origin, token: m.token, post: (u) => postMessage(u) });
    return;
  }
  engine.handle(m);
};
