// Sparklines: a worker's GPU utilization and VRAM use over the last five
// minutes, drawn on a small canvas. The newest sample sits at the right edge.
// The x scale spans the samples there are, at least MIN_SPAN (so a young
// worker's first minute fills from the right instead of squeezing into a few
// pixels), at most HISTORY. NaN samples (seconds without a report) break the
// line.

import { HISTORY } from './model.js';

const MIN_SPAN = 60;

// drawSpark draws w's history on canvas, whose CSS size is cssW x cssH (passed
// in so that drawing never forces a layout), with colors {gpu, gpuFill, vram,
// grid}.
export function drawSpark(canvas, w, colors, cssW, cssH) {
  const dpr = window.devicePixelRatio || 1;
  const W = Math.round(cssW * dpr);
  const H = Math.round(cssH * dpr);
  if (canvas.width !== W || canvas.height !== H) {
    canvas.width = W;
    canvas.height = H;
  }
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, W, H);
  const pad = Math.max(1, Math.round(dpr));
  const top = pad;
  const bottom = H - pad;
  const step = (W - 1) / (Math.min(HISTORY, Math.max(MIN_SPAN, w.len)) - 1);
  ctx.lineWidth = Math.max(1, dpr);
  ctx.lineJoin = 'round';

  // baseline
  ctx.strokeStyle = colors.grid;
  ctx.beginPath();
  ctx.moveTo(0, bottom + 0.5);
  ctx.lineTo(W, bottom + 0.5);
  ctx.stroke();

  series(ctx, w, w.gpu, step, top, bottom, W, colors.gpu, colors.gpuFill);
  series(ctx, w, w.vram, step, top, bottom, W, colors.vram, null);
}

function series(ctx, w, buf, step, top, bottom, W, stroke, fill) {
  const n = w.len;
  if (n === 0) return;
  const start = (w.head - n + HISTORY) % HISTORY;
  const y = (v) => bottom - (Math.min(100, Math.max(0, v)) / 100) * (bottom - top);
  const x = (i) => W - 1 - (n - 1 - i) * step;
  // Runs of finite samples, each filled and stroked on its own.
  let i = 0;
  while (i < n) {
    while (i < n && !Number.isFinite(buf[(start + i) % HISTORY])) i++;
    if (i >= n) break;
    const from = i;
    ctx.beginPath();
    ctx.moveTo(x(i), y(buf[(start + i) % HISTORY]));
    for (i++; i < n; i++) {
      const v = buf[(start + i) % HISTORY];
      if (!Number.isFinite(v)) break;
      ctx.lineTo(x(i), y(v));
    }
    const to = i - 1;
    if (to === from) ctx.lineTo(x(from) + 1, y(buf[(start + from) % HISTORY]));
    if (fill) {
      ctx.save();
      ctx.lineTo(x(to), bottom);
      ctx.lineTo(x(from), bottom);
      ctx.closePath();
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.restore();
      // Re-stroke only the top edge.
      ctx.beginPath();
      ctx.moveTo(x(from), y(buf[(start + from) % HISTORY]));
      for (let j = from + 1; j <= to; j++) ctx.lineTo(x(j), y(buf[(start + j) % HISTORY]));
    }
    ctx.strokeStyle = stroke;
    ctx.stroke();
  }
}
