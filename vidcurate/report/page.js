'use strict';
// The inspect page: decodes the compact score columns (vidcurate/report/page.py), recounts kept/dropped
// clips and hours whenever a threshold moves, draws histograms, contact sheets and the other views.
// A threshold is a bin boundary: min keeps codes >= kmin, max keeps codes <= kmax (null = no rule), so
// every count here is exact for the value "Export thresholds" writes. Vanilla JS + SVG, no network.
(async function () {
  const $ = (s, el = document) => el.querySelector(s);
  const el = (tag, attrs = {}, ...kids) => {
    const ns = ['svg', 'rect', 'line', 'g', 'text', 'path'].includes(tag) ? 'http://www.w3.org/2000/svg' : null;
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'text') e.textContent = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  };
  const t0 = performance.now();
  const META = JSON.parse($('#meta').textContent);
  const N = META.n, DB = 60;

  // ------------------------------------------------------------------------------------------ data
  function b64(s) {
    s = s.trim();
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(s);
    const bin = atob(s), u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return u;
  }
  async function blob(id) {
    const tag = document.getElementById(id);
    let u = b64(tag.textContent);
    if (tag.dataset.z) {
      const s = new Blob([u]).stream().pipeThrough(new DecompressionStream('deflate'));
      u = new Uint8Array(await new Response(s).arrayBuffer());
    }
    tag.textContent = '';  // the text is no longer needed: free it
    return u;
  }
  const view = (u, T) => new T(u.buffer.slice(u.byteOffset, u.byteOffset + u.byteLength));
  const num = x => (x === null || x === undefined) ? null : Number(x);

  const cols = [];
  for (const c of META.columns) {
    if (c.empty) continue;
    const u = await blob(c.code);
    c.codes = c.missing === 255 ? u : view(u, Uint16Array);
    const F = c.f === 4 ? Float32Array : Float64Array;
    c.lo = view(await blob(c.lo), F);
    c.hi = c.hi ? view(await blob(c.hi), F) : c.lo;
    c.smin = num(c.min); c.smax = num(c.max);  // stored thresholds (values)
    c.kmin0 = c.kmin; c.kmax0 = c.kmax;        // ... as bin boundaries
    // A value given for a boundary (stored or typed) is shown and exported as is while the handle stays there.
    c.pin = { min: c.smin === null ? null : { k: c.kmin, t: c.smin }, max: c.smax === null ? null : { k: c.kmax, t: c.smax } };
    const [a, b] = c.range;
    c.disp = new Uint8Array(c.nbins);
    for (let k = 0; k < c.nbins; k++) c.disp[k] = Math.max(0, Math.min(DB - 1, Math.floor((c.lo[k] - a) / (b - a) * DB)));
    c.hk = new Int32Array(DB); c.hd = new Int32Array(DB);
    cols.push(c);
  }
  const dur = view(await blob(META.dur), Float32Array);
  const F = await blob(META.flags);
  const cats = [];
  for (const c of META.categories) { if (c.code) c.codes = await blob(c.code); cats.push(c); }
  let idsCache = null;
  async function ids() {
    if (!idsCache) idsCache = new TextDecoder().decode(await blob(META.ids)).split('\n');
    return idsCache;
  }
  const idOf = async i => (await ids())[i].split('\t');

  // ------------------------------------------------------------------------------ threshold values
  function niceIn(a, b, upper) {  // the shortest decimal in (a, b] (upper) or [a, b) (lower)
    const ok = x => upper ? (x > a && x <= b) : (x >= a && x < b);
    if (ok(0)) return 0;
    const ref = upper ? b : a;
    if (!isFinite(ref)) return ref;
    for (let p = 1; p <= 17; p++) {
      const e = Math.floor(Math.log10(Math.abs(ref))) - p + 1;
      const s = Math.pow(10, Math.abs(e));
      let x = e < 0 ? (upper ? Math.floor(b * s) / s : Math.ceil(a * s) / s)
                    : (upper ? Math.floor(b / s) * s : Math.ceil(a / s) * s);
      x = Number(x.toPrecision(p));
      if (ok(x)) return x;
    }
    return ref;
  }
  const span = c => Math.max(1, Math.abs(c.hi[c.nbins - 1] - c.lo[0]));
  function tmin(c) {  // the exported min of the current boundary (the stored value when unchanged)
    const k = c.kmin;
    if (k === null) return null;
    if (c.pin.min && c.pin.min.k === k) return c.pin.min.t;
    const a = k > 0 ? c.hi[k - 1] : c.lo[0] - span(c), b = k < c.nbins ? c.lo[k] : c.hi[c.nbins - 1] + span(c);
    return niceIn(a, b, true);
  }
  function tmax(c) {
    const k = c.kmax;
    if (k === null) return null;
    if (c.pin.max && c.pin.max.k === k) return c.pin.max.t;
    const a = k >= 0 ? c.hi[k] : c.lo[0] - span(c), b = k < c.nbins - 1 ? c.lo[k + 1] : c.hi[c.nbins - 1] + span(c);
    return niceIn(a, b, false);
  }
  function fmtG(x) {  // Python's format(x, "g"): the reason text the filter writes
    if (!isFinite(x)) return x > 0 ? 'inf' : (x < 0 ? '-inf' : 'nan');
    if (x === 0) return '0';
    const r = Number(x.toPrecision(6)), e = Math.floor(Math.log10(Math.abs(r)));
    if (e < -4 || e >= 6) {
      let [m, ex] = r.toExponential(5).split('e');
      m = m.replace(/\.?0+$/, '');
      const n = Math.abs(Number(ex));
      return m + 'e' + (Number(ex) < 0 ? '-' : '+') + (n < 10 ? '0' : '') + n;
    }
    return r.toFixed(Math.max(0, 5 - e)).replace(/\.0+$|(\.\d*?)0+$/, '$1');
  }
  const fmt = x => x === null ? '' : (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(3) : +x.toPrecision(4)).toString();
  const hours = s => s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(s < 360000 ? 2 : 0)} h`;
  function bisectLeft(arr, x) { let lo = 0, hi = arr.length; while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] < x) lo = m + 1; else hi = m; } return lo; }
  function bisectRight(arr, x) { let lo = 0, hi = arr.length; while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] <= x) lo = m + 1; else hi = m; } return lo; }
  const kForMin = (c, v) => bisectLeft(c.lo, v);       // first bin whose values are all >= v
  const kForMax = (c, v) => bisectRight(c.hi, v) - 1;  // last bin whose values are all <= v

  // ----------------------------------------------------------------------------------- recounting
  const nfail = new Uint8Array(N), last = new Uint8Array(N), kept = new Uint8Array(N), base = new Uint8Array(N);
  let S = null;  // the latest counts
  let histReady = false;  // histograms hold the counts of `kept` (kept starts all 0: every clip dropped)
  function recount() {
    nfail.fill(0);
    const labels = [], cnt = [], hrs = [];
    for (const c of cols) {
      if (c.kmin === null && c.kmax === null) continue;
      const C = c.codes, miss = c.missing, kmin = c.kmin === null ? -1 : c.kmin, kmax = c.kmax === null ? 1e9 : c.kmax;
      const li = labels.length, lj = li + (c.kmin !== null ? 1 : 0);
      if (c.kmin !== null) { labels.push(`${c.name}<${fmtG(tmin(c))}`); cnt.push(0); hrs.push(0); }
      if (c.kmax !== null) { labels.push(`${c.name}>${fmtG(tmax(c))}`); cnt.push(0); hrs.push(0); }
      let n1 = 0, h1 = 0, n2 = 0, h2 = 0;
      for (let i = 0; i < N; i++) {
        const v = C[i];
        if (v === miss || (F[i] & 1)) continue;
        if (v < kmin) { nfail[i]++; last[i] = li; n1++; h1 += dur[i]; }
        else if (v > kmax) { nfail[i]++; last[i] = lj; n2++; h2 += dur[i]; }
      }
      if (c.kmin !== null) { cnt[li] = n1; hrs[li] = h1; }
      if (c.kmax !== null) { cnt[lj] = n2; hrs[lj] = h2; }
    }
    const only = new Int32Array(labels.length);
    let k = 0, kh = 0, e = 0, eh = 0, add = 0, rem = 0, kd = 0, all = 0;
    const flips = [];
    for (let i = 0; i < N; i++) {
      all += dur[i];
      if (F[i] & 1) { e++; eh += dur[i]; continue; }
      const ok = nfail[i] === 0 ? 1 : 0;
      if (ok !== kept[i]) { kept[i] = ok; flips.push(i); }
      if (ok) { k++; kh += dur[i]; if (!(F[i] & 2)) kd++; } else if (nfail[i] === 1) only[last[i]]++;
      if (ok && !base[i]) add++; else if (!ok && base[i]) rem++;
    }
    // Histograms and category counts: a full pass once, then only the clips whose kept state flipped.
    if (!histReady) {
      for (const c of cols) {
        const C = c.codes, miss = c.missing, D = c.disp, hk = c.hk, hd = c.hd;
        for (let i = 0; i < N; i++) { const v = C[i]; if (v === miss) continue; if (kept[i]) hk[D[v]]++; else hd[D[v]]++; }
      }
      for (const c of cats) {
        if (!c.codes) continue;
        c.tot = new Int32Array(256); c.kep = new Int32Array(256); c.kh = new Float64Array(256);
        for (let i = 0; i < N; i++) { const v = c.codes[i]; c.tot[v]++; if (kept[i]) { c.kep[v]++; c.kh[v] += dur[i]; } }
      }
      histReady = true;
    } else {
      for (const c of cols) {
        const C = c.codes, miss = c.missing, D = c.disp, hk = c.hk, hd = c.hd;
        for (const i of flips) {
          const v = C[i];
          if (v === miss) continue;
          const d = D[v];
          if (kept[i]) { hk[d]++; hd[d]--; } else { hk[d]--; hd[d]++; }
        }
      }
      for (const c of cats) {
        if (!c.codes) continue;
        for (const i of flips) {
          const v = c.codes[i], s = kept[i] ? 1 : -1;
          c.kep[v] += s; c.kh[v] += s * dur[i];
        }
      }
    }
    S = { labels, cnt, hrs, only, kept: k, keptH: kh, errors: e, errorsH: eh, dropped: N - k - e,
          droppedH: all - kh - eh, added: add, removed: rem, keptNotDup: kd, all };
    return S;
  }

  // ----------------------------------------------------------------------------------- the layout
  const app = $('#app');
  app.innerHTML = '';
  const tpl = id => { const t = document.getElementById('static-' + id); return t ? t.content.cloneNode(true) : null; };
  const bar = el('div', { id: 'bar' },
    el('span', {}, el('b', { id: 'kept', class: 'k' }), ' kept ', el('span', { id: 'kept-share' }), ' · ',
       el('span', { id: 'kept-hours' })),
    el('span', { class: 'd' }, el('b', { id: 'dropped' }), ' dropped · ', el('span', { id: 'dropped-hours' })),
    el('span', { class: 'd' }, el('b', { id: 'errors' }), ' errors'),
    el('span', {}, 'vs stored thresholds: ', el('b', { id: 'added', class: 'a' }), ' added, ',
       el('b', { id: 'removed', class: 'r' }), ' removed'),
    META.dedup && !META.dedup.error ? el('span', { class: 'd' }, el('b', { id: 'kept-nodup' }), ' kept and not a duplicate') : null,
    el('button', { id: 'export-btn', onclick: () => showExport() }, 'Export thresholds'),
    el('button', { id: 'reset-btn', onclick: () => { for (const c of cols) { c.kmin = c.kmin0; c.kmax = c.kmax0;
      c.pin = { min: c.smin === null ? null : { k: c.kmin0, t: c.smin }, max: c.smax === null ? null : { k: c.kmax0, t: c.smax } }; } update(); } }, 'Reset'));
  app.append(bar);
  app.append(el('p', {}, `${N} clips in the scores table (${META.stored_kept} stored as passed). Drag a red (min) or purple `
    + '(max) handle, use the arrow keys on a focused handle (one bin; Shift: 100), or type a value; a handle at the '
    + 'edge means no rule. Counts and hours are recomputed over every clip.'));
  app.append(el('h2', {}, 'Dropped by reason'), el('p', { class: 'note' }, 'A clip can break several rules; "only this" counts '
    + 'clips no other rule drops. Click a reason for a contact sheet.'), el('div', { id: 'reasons' }));
  const legend = el('p', { class: 'legend' }, el('span', { style: 'background:#4caf50' }), 'kept',
    el('span', { style: 'background:#9e9e9e' }), 'dropped (any reason)', el('span', { style: 'background:#d32f2f' }), 'min',
    el('span', { style: 'background:#6a1b9a' }), 'max');
  const metrics = el('div', { class: 'metrics', id: 'metrics' });
  const skipped = META.columns.filter(c => c.empty).map(c => c.name);
  // Two panes: the histograms, and beside them (sticky while they scroll) the contact sheets.
  app.append(el('div', { class: 'work' },
    el('div', {}, el('h2', {}, 'Scores'), legend, metrics,
       skipped.length ? el('p', { class: 'warn' }, 'No values: ' + skipped.join(', ')) : null),
    el('div', { class: 'side' }, el('h2', {}, 'Contact sheets'), el('p', { class: 'note', id: 'thumbs' }),
       el('div', { id: 'sheets' }))));
  if (cats.length) app.append(el('h2', {}, 'Categories (camera types, ...)'), el('div', { id: 'cats' }));
  if (META.dedup) app.append(el('h2', {}, 'Duplicate groups'), el('div', { id: 'dedup' }));
  app.append(el('h2', {}, 'Captions'), el('div', { id: 'captions' }, tpl('captions')));
  app.append(el('h2', {}, 'Per source video'), tpl('videos'));
  if (tpl('errors')) app.append(el('h2', {}, 'Errors'), tpl('errors'));
  app.append(el('h2', {}, 'Tables'), tpl('counts'));

  // ------------------------------------------------------------------------------------ histograms
  const W = 520, H = 150, X0 = 42, X1 = W - 18, YB = H - 24, PH = H - 40;
  let focus = null;  // {c, side}: the threshold whose neighbourhood the first contact sheet shows
  function xOf(c, v) { const [a, b] = c.range; return Math.max(X0, Math.min(X1, X0 + (v - a) / (b - a) * (X1 - X0))); }
  function valOf(c, x) { const [a, b] = c.range; return a + (x - X0) / (X1 - X0) * (b - a); }
  for (const c of cols) {
    const svg = el('svg', { width: W, height: H, class: 'hist', 'data-col': c.name });
    c.bk = []; c.bd = [];
    const bw = (X1 - X0) / DB;
    for (let d = 0; d < DB; d++) {
      const r1 = el('rect', { x: (X0 + d * bw).toFixed(1), width: (bw - 1).toFixed(1), class: 'bk' });
      const r2 = el('rect', { x: (X0 + d * bw).toFixed(1), width: (bw - 1).toFixed(1), class: 'bd' });
      svg.append(r1, r2); c.bk.push(r1); c.bd.push(r2);
    }
    svg.append(el('line', { x1: X0, y1: YB, x2: X1, y2: YB, stroke: '#444' }));
    const [a, b] = c.range;
    for (let j = 0; j <= 4; j++) {
      const v = a + (b - a) * j / 4;
      svg.append(el('text', { x: xOf(c, v), y: H - 8, 'text-anchor': 'middle', text: fmt(v) }));
    }
    c.ymax = el('text', { x: 4, y: 16 }); svg.append(c.ymax, el('text', { x: 4, y: YB, text: '0' }));
    c.h = {};
    for (const side of ['min', 'max']) {
      const g = el('g', { class: 'handle ' + side, tabindex: 0, 'data-col': c.name, 'data-side': side },
        el('line', { y1: 10, y2: YB }), el('rect', { x: -7, y: 6, width: 14, height: YB - 6 }),
        el('text', { y: side === 'min' ? 20 : 32, x: 4 }));
      svg.append(g); c.h[side] = g;
      g.addEventListener('pointerdown', ev => { g.setPointerCapture(ev.pointerId); g.focus(); ev.preventDefault(); });
      g.addEventListener('pointermove', ev => {
        if (!g.hasPointerCapture(ev.pointerId)) return;
        const r = svg.getBoundingClientRect();
        drag(c, side, (ev.clientX - r.left) * W / r.width);
      });
      g.addEventListener('keydown', ev => {
        const d = { ArrowLeft: -1, ArrowRight: 1 }[ev.key];
        if (!d) return;
        ev.preventDefault();
        const step = d * (ev.shiftKey ? 100 : 1), key = side === 'min' ? 'kmin' : 'kmax';
        const cur = c[key] === null ? (side === 'min' ? 0 : c.nbins - 1) : c[key];
        setK(c, side, cur + step);
      });
    }
    const inMin = el('input', { class: 'tmin', 'data-col': c.name, placeholder: 'no min' });
    const inMax = el('input', { class: 'tmax', 'data-col': c.name, placeholder: 'no max' });
    const typed = (inp, side) => inp.addEventListener('change', () => {
      const s = inp.value.trim(), v = Number(s);
      if (s === '') setK(c, side, null);
      else if (!Number.isNaN(v)) {
        const k = side === 'min' ? kForMin(c, v) : kForMax(c, v);
        // Keep the typed value when it classifies every clip as the boundary does (else it snaps).
        const fits = side === 'min' ? (k === 0 || c.hi[k - 1] < v) && (k === c.nbins || v <= c.lo[k])
                                    : (k === -1 || c.hi[k] <= v) && (k === c.nbins - 1 || v < c.lo[k + 1]);
        if (fits) c.pin[side] = { k, t: v };
        setK(c, side, k);
      } else inp.value = '';
    });
    typed(inMin, 'min'); typed(inMax, 'max');
    c.inMin = inMin; c.inMax = inMax;
    c.cnt = el('span', { class: 'cnt' });
    const q = c.quantiles.map((v, j) => `p${[0, 5, 25, 50, 75, 95, 100][j]}=${fmt(v)}`).join(' ');
    c.card = el('div', { class: 'metric', 'data-col': c.name },
      el('h3', {}, c.name, ' ', el('small', { text: c.lossless ? '' : `(${c.nbins} bins of equal counts)` })), svg,
      el('div', { class: 'ctl' }, 'min ', inMin, ' max ', inMax, c.cnt), el('div', { class: 'q', text: q }));
    metrics.append(c.card);
  }
  function drag(c, side, x) {
    if (side === 'min') setK(c, side, x <= X0 ? null : kForMin(c, valOf(c, x)));
    else setK(c, side, x >= X1 ? null : kForMax(c, valOf(c, x)));
  }
  function setK(c, side, k) {
    if (side === 'min') {
      if (k !== null) k = Math.max(0, Math.min(k, c.nbins, c.kmax === null ? c.nbins : c.kmax));
      c.kmin = k;
    } else {
      if (k !== null) k = Math.min(c.nbins - 1, Math.max(k, -1, c.kmin === null ? -1 : c.kmin));
      c.kmax = k;
    }
    focus = { c, side };
    schedule();
  }
  function drawHist(c) {
    let top = 1;
    for (let d = 0; d < DB; d++) top = Math.max(top, c.hk[d] + c.hd[d]);
    for (let d = 0; d < DB; d++) {
      const kh = c.hk[d] / top * PH, dh = c.hd[d] / top * PH;
      c.bk[d].setAttribute('y', (YB - kh).toFixed(1)); c.bk[d].setAttribute('height', kh.toFixed(1));
      c.bd[d].setAttribute('y', (YB - kh - dh).toFixed(1)); c.bd[d].setAttribute('height', dh.toFixed(1));
    }
    c.ymax.textContent = top;
    for (const side of ['min', 'max']) {
      const t = side === 'min' ? tmin(c) : tmax(c), g = c.h[side];
      const x = t === null ? (side === 'min' ? X0 - 10 : X1 + 10) : xOf(c, t);
      g.setAttribute('transform', `translate(${x.toFixed(1)},0)`);
      g.classList.toggle('off', t === null);
      g.setAttribute('data-t', t === null ? '' : String(t));
      const tx = g.querySelector('text');
      tx.textContent = t === null ? '' : `${side} ${fmtG(t)}`;
      tx.setAttribute('text-anchor', x > X0 + 0.6 * (X1 - X0) ? 'end' : 'start');
      tx.setAttribute('x', x > X0 + 0.6 * (X1 - X0) ? -4 : 4);
      const inp = side === 'min' ? c.inMin : c.inMax;
      if (document.activeElement !== inp) inp.value = t === null ? '' : String(t);
    }
    c.card.classList.toggle('rule', c.kmin !== null || c.kmax !== null);
  }

  // ------------------------------------------------------------------------------- contact sheets
  const sheets = $('#sheets');
  const TH = 54, PER = 8;
  let drawn = 0, failed = 0, asked = 0, active = 0;
  const queue = [];
  const thumbs = $('#thumbs');
  function thumbStats() {
    thumbs.textContent = META.clip_base === null
      ? 'Thumbnails need the clip files: this root is not local to the page (run inspect --serve).'
      : `Each strip: frames at 20%, 50% and 80% of a clip, drawn by the browser from the clip file when it scrolls into view `
        + `(click a clip to play it). Green border: kept, red: dropped. Thumbnails: ${drawn} drawn, ${failed} failed, `
        + `${asked - drawn - failed} waiting.`;
    thumbs.dataset.drawn = drawn; thumbs.dataset.failed = failed; thumbs.dataset.asked = asked;
  }
  const clipUrl = p => META.clip_base + p.split('/').map(encodeURIComponent).join('/');
  function once(v, ok, bad, ms) {
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('timeout')), ms);
      v.addEventListener(ok, () => { clearTimeout(t); res(); }, { once: true });
      v.addEventListener(bad, () => { clearTimeout(t); rej(new Error('error')); }, { once: true });
    });
  }
  async function strip(canvas, url) {
    const v = el('video', { muted: '', preload: 'auto' });
    v.muted = true; v.src = url;
    try {
      await once(v, 'loadeddata', 'error', 15000);
      const fw = Math.max(8, Math.round(TH * v.videoWidth / Math.max(1, v.videoHeight)));
      canvas.width = 3 * fw; canvas.height = TH;
      const ctx = canvas.getContext('2d');
      for (const [j, f] of [0.2, 0.5, 0.8].entries()) {
        v.currentTime = f * v.duration;
        await once(v, 'seeked', 'error', 15000);
        ctx.drawImage(v, j * fw, 0, fw, TH);
      }
      drawn++;
    } catch (err) {
      failed++;
      canvas.replaceWith(el('div', { class: 'nothumb', text: 'no frame' }));
    } finally { v.removeAttribute('src'); v.load(); }
  }
  function pump() {
    while (active < 3 && queue.length) {
      const [cv, url] = queue.shift();
      active++;
      strip(cv, url).finally(() => { active--; thumbStats(); pump(); });
    }
    thumbStats();
  }
  const seen = new IntersectionObserver(entries => {
    for (const en of entries) {
      if (!en.isIntersecting) continue;
      seen.unobserve(en.target);
      asked++; queue.push([en.target, en.target.dataset.url]);
    }
    pump();
  }, { rootMargin: '200px' });
  async function tile(i, note) {
    if (i < 0) return el('div', { class: 'clip bad' }, el('div', { class: 'nothumb', text: 'not in scores' }), note);
    const [id, path] = await idOf(i);
    const d = el('div', { class: 'clip' + (kept[i] ? '' : ' bad'), 'data-row': i, title: id });
    if (META.clip_base !== null && path) {
      const cv = el('canvas', { width: 3 * 72, height: TH, 'data-url': clipUrl(path) });
      d.append(cv); seen.observe(cv);
      d.addEventListener('click', () => play(id, clipUrl(path), i));
    } else d.append(el('div', { class: 'nothumb', text: path ? 'no local file' : 'no clip file' }));
    d.append(el('div', { text: note }), el('div', { text: id.slice(-28) }));
    return d;
  }
  function valueText(c, i) {
    const k = c.codes[i];
    if (k === c.missing) return `${c.name}=-`;
    return c.lossless || c.lo[k] === c.hi[k] ? `${c.name}=${fmt(c.lo[k])}` : `${c.name}≈${fmt(c.lo[k])}..${fmt(c.hi[k])}`;
  }
  async function sheet(key, title, note, rows, label) {
    let s = sheets.querySelector(`[data-sheet="${key}"]`);
    const sig = rows.join(',') + '|' + title;
    if (s && s.dataset.sig === sig) return;
    const tiles = el('div', { class: 'tiles' });
    const ns = el('div', { class: 'sheet', 'data-sheet': key, 'data-sig': sig }, el('h3', { text: title }),
      el('p', { class: 'note', text: note }), tiles);
    for (const i of rows) tiles.append(await tile(i, label(i)));
    if (!rows.length) tiles.append(el('span', { class: 'note', text: 'none' }));
    if (s) s.replaceWith(ns); else sheets.append(ns);
  }
  function nearest(c, side) {  // up to PER/2 clips either side of the boundary, nearest first
    const b = side === 'min' ? c.kmin : c.kmax + 1, C = c.codes, miss = c.missing;
    let w = Math.max(1, Math.round(c.nbins / 2000)), below = [], above = [];
    for (;;) {
      below = []; above = [];
      for (let i = 0; i < N; i++) {
        const v = C[i];
        if (v === miss || (F[i] & 1)) continue;
        if (v < b && v >= b - w) below.push(i); else if (v >= b && v < b + w) above.push(i);
      }
      if ((below.length >= PER / 2 && above.length >= PER / 2) || w > c.nbins) break;
      w *= 4;
    }
    below.sort((x, y) => C[y] - C[x] || x - y); above.sort((x, y) => C[x] - C[y] || x - y);
    return below.slice(0, PER / 2).reverse().concat(above.slice(0, PER / 2));
  }
  const spread = (rows, k) => rows.length <= k ? rows : Array.from({ length: k }, (_, j) => rows[Math.floor(j * rows.length / k)]);
  let reasonSel = null;
  async function drawSheets() {
    if (!focus) {
      const c = cols.find(c => c.kmin !== null || c.kmax !== null);
      if (c) focus = { c, side: c.kmin !== null ? 'min' : 'max' };
    }
    if (focus && (focus.side === 'min' ? focus.c.kmin : focus.c.kmax) !== null) {
      const { c, side } = focus, t = side === 'min' ? tmin(c) : tmax(c);
      await sheet('near', `${c.name} near its ${side} ${fmtG(t)}`, `the ${PER} clips closest to the threshold, by score `
        + `(left of the boundary: below it)`, nearest(c, side), i => valueText(c, i));
    } else await sheet('near', 'Near a threshold', 'move a handle to see the clips nearest to it', [], () => '');
    const add = [], rem = [];
    for (let i = 0; i < N; i++) { if (kept[i] && !base[i]) add.push(i); else if (!kept[i] && base[i]) rem.push(i); }
    const lab = i => focus ? valueText(focus.c, i) : '';
    await sheet('added', `Added by the change: ${add.length} clips`, `kept now, dropped under the stored thresholds `
      + `(${Math.min(PER, add.length)} spread over them)`, spread(add, PER), lab);
    await sheet('removed', `Removed by the change: ${rem.length} clips`, `dropped now, kept under the stored thresholds `
      + `(${Math.min(PER, rem.length)} spread over them)`, spread(rem, PER), lab);
    if (reasonSel !== null) {
      const li = S.labels.indexOf(reasonSel), rows = [];
      if (li < 0) { const old = sheets.querySelector('[data-sheet="reason"]'); if (old) old.remove(); reasonSel = null; }
      if (li >= 0) {
        const c = cols.find(c => reasonSel.startsWith(c.name + '<') || reasonSel.startsWith(c.name + '>'));
        const k = reasonSel.startsWith(c.name + '<') ? 'lo' : 'hi';
        for (let i = 0; i < N; i++) {
          const v = c.codes[i];
          if (v === c.missing || (F[i] & 1)) continue;
          if (k === 'lo' ? v < c.kmin : v > c.kmax) rows.push(i);
        }
        await sheet('reason', `Dropped: ${reasonSel} (${rows.length} clips)`, `${Math.min(PER, rows.length)} spread over them`,
          spread(rows, PER), i => valueText(c, i));
      }
    }
  }
  function play(id, url, i) {
    const d = $('#viewer') || document.body.appendChild(el('dialog', { id: 'viewer' }));
    d.innerHTML = '';
    const vals = cols.map(c => valueText(c, i)).join('  ');
    d.append(el('h3', { text: id }), el('video', { src: url, controls: '', autoplay: '', muted: '', loop: '' }),
      el('p', { class: 'note', text: vals }), el('button', { onclick: () => d.close() }, 'Close'));
    d.showModal();
  }

  // ------------------------------------------------------------------------------------ the views
  function drawReasons() {
    const rows = S.labels.map((l, j) => [l, S.cnt[j], S.hrs[j], S.only[j]]).sort((a, b) => b[1] - a[1]);
    const t = el('table', { id: 'reasons-table' }, el('tr', {}, el('th', { class: 'l' }, 'reason'), el('th', {}, 'clips'),
      el('th', {}, 'share'), el('th', {}, 'duration'), el('th', {}, 'only this')));
    for (const [l, n, h, o] of rows) {
      t.append(el('tr', { class: 'click' + (l === reasonSel ? ' sel' : ''), 'data-reason': l,
        onclick: () => { reasonSel = l; schedule(); } }, el('td', { class: 'l', text: l }), el('td', { text: n }),
        el('td', { text: (100 * n / Math.max(1, N)).toFixed(1) + '%' }), el('td', { text: hours(h) }), el('td', { text: o })));
    }
    if (S.errors) t.append(el('tr', { 'data-reason': 'error' }, el('td', { class: 'l', text: 'error' }), el('td', { text: S.errors }),
      el('td', { text: (100 * S.errors / Math.max(1, N)).toFixed(1) + '%' }), el('td', { text: hours(S.errorsH) }), el('td', { text: S.errors })));
    $('#reasons').replaceChildren(rows.length || S.errors ? t : el('p', { text: 'No rule drops a clip.' }));
  }
  function drawCats() {
    const box = $('#cats');
    if (!box) return;
    box.replaceChildren();
    for (const c of cats) {
      if (!c.codes) { box.append(el('p', { class: 'warn', text: `${c.name}: no view (${c.skipped})` })); continue; }
      const t = el('table', { 'data-cat': c.name }, el('tr', {}, el('th', { class: 'l' }, c.name), el('th', {}, 'clips'),
        el('th', {}, 'kept now'), el('th', {}, 'kept duration'), el('th', { class: 'l' }, '')));
      const order = [...c.values.keys()].sort((a, b) => c.tot[b] - c.tot[a]);
      if (c.tot[255]) order.push(255);
      const top = Math.max(1, ...order.map(v => c.tot[v]));
      for (const v of order) {
        t.append(el('tr', { 'data-value': v === 255 ? '' : c.values[v] }, el('td', { class: 'l', text: v === 255 ? '(none)' : c.values[v] }),
          el('td', { text: c.tot[v] }), el('td', { text: c.kep[v] }), el('td', { text: hours(c.kh[v]) }),
          el('td', { class: 'l' }, el('span', { class: 'bar', style: `width:${(150 * c.kep[v] / top).toFixed(0)}px` }),
            el('span', { class: 'bar d', style: `width:${(150 * (c.tot[v] - c.kep[v]) / top).toFixed(0)}px` }))));
      }
      box.append(t);
    }
  }
  async function drawDedup() {
    const box = $('#dedup'), D = META.dedup;
    if (!box || box.dataset.done) return;
    box.dataset.done = 1;
    if (D.error) { box.append(el('p', { class: 'warn', text: D.error })); return; }
    const sizes = Object.entries(D.sizes).map(([k, v]) => `${v} of ${k}`).join(', ');
    box.append(el('p', { text: `${D.rows} clips in the dedup table (${D.methods.join(', ')}): ${D.groups} groups with `
      + `duplicates (${sizes || 'none'}), ${D.duplicates} clips dropped as duplicates. The ${D.shown.length} largest groups, `
      + 'the kept clip first, then its duplicates with their similarity:' }));
    const gs = el('div', { class: 'groups' });
    for (const g of D.shown) {
      const row = el('div', { class: 'group', 'data-group': g.group }, el('div', { class: 'gl', text: `group ${g.group} (${g.size})` }));
      for (const m of g.members) {
        row.append(await tile(m.row, m.kept ? 'kept' : `dup ${m.similarity === null ? '' : m.similarity.toFixed(3)}`));
      }
      gs.append(row);
    }
    box.append(gs);
  }
  function drawBar() {
    $('#kept').textContent = S.kept;
    $('#kept-share').textContent = `(${(100 * S.kept / Math.max(1, N)).toFixed(1)}%)`;
    $('#kept-hours').textContent = hours(S.keptH);
    $('#dropped').textContent = S.dropped; $('#dropped-hours').textContent = hours(S.droppedH);
    $('#errors').textContent = S.errors;
    $('#added').textContent = S.added; $('#removed').textContent = S.removed;
    if ($('#kept-nodup')) $('#kept-nodup').textContent = S.keptNotDup;
    for (const c of cols) {
      const n = S.labels.reduce((a, l, j) => a + (l.startsWith(c.name + '<') || l.startsWith(c.name + '>') ? S.cnt[j] : 0), 0);
      c.cnt.textContent = c.kmin === null && c.kmax === null ? 'no rule' : `drops ${n} clips`;
    }
  }

  // ------------------------------------------------------------------------------------ export
  function thresholds() {  // scorer -> metric -> {min, max}: every rule now, and stored rules now removed (as ±inf)
    const out = {};
    for (const c of cols.concat(META.columns.filter(c => c.empty))) {
      const stored = { min: num(c.min), max: num(c.max) };
      const now = c.codes ? { min: tmin(c), max: tmax(c) } : stored;  // a column without values keeps its rule
      const e = {};
      for (const s of ['min', 'max']) {
        if (now[s] !== null) e[s] = now[s];
        else if (stored[s] !== null) e[s] = s === 'min' ? -Infinity : Infinity;
      }
      if (Object.keys(e).length) (out[c.scorer] = out[c.scorer] || {})[c.metric] = e;
    }
    return out;
  }
  function yamlNum(x) {
    if (x === Infinity) return '.inf';
    if (x === -Infinity) return '-.inf';
    let s = String(x);
    if (s.includes('e') && !s.split('e')[0].includes('.')) s = s.replace('e', '.0e');
    return s;
  }
  const flow = e => '{' + Object.entries(e).map(([k, v]) => `${k}: ${yamlNum(v)}`).join(', ') + '}';
  function exportText() {
    const th = thresholds();
    let y = 'filter:\n  scorers:\n';
    const sets = [];
    for (const [s, ms] of Object.entries(th)) {
      y += `    ${s}:\n      thresholds:\n`;
      for (const [m, e] of Object.entries(ms)) y += `        ${m}: ${flow(e)}\n`;
      sets.push(`--set 'filter.scorers.${s}.thresholds={${Object.entries(ms).map(([m, e]) => `${m}: ${flow(e)}`).join(', ')}}'`);
    }
    return { yaml: y, sets: sets.join(' \\\n  ') };
  }
  function showExport() {
    const { yaml, sets } = exportText();
    const d = $('#export') || document.body.appendChild(el('dialog', { id: 'export' }));
    d.innerHTML = '';
    const ta = el('textarea', { id: 'export-yaml', rows: 12, readonly: '' }); ta.value = yaml;
    const tb = el('textarea', { id: 'export-set', rows: 4, readonly: '' });
    tb.value = `python -m vidcurate run pipelines.yaml --stage filter --rules-only \\\n  ${sets}`;
    d.append(el('h3', { text: 'Thresholds' }), el('p', { class: 'note', text: 'Replace each scorer\'s `thresholds` in '
      + 'pipelines.yaml with these (a removed rule is written as -.inf/.inf so a built-in default does not come back), '
      + 'then re-apply them to the stored scores without scoring again:' }), ta, el('p', { class: 'note', text: 'or in one command:' }), tb,
      el('p', {}, el('button', { onclick: () => navigator.clipboard && navigator.clipboard.writeText(ta.value) }, 'Copy yaml'), ' ',
        el('button', { onclick: () => d.close() }, 'Close')));
    d.showModal();
  }

  // ------------------------------------------------------------------------------------ updates
  let pending = false, busy = Promise.resolve();
  function update() {
    recount();
    drawBar(); drawReasons(); drawCats();
    for (const c of cols) drawHist(c);
    busy = busy.then(drawSheets).catch(err => console.error(err));
    return busy;
  }
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; update(); });
  }
  // The baseline: the stored thresholds, recounted here (equal to the stored `passed` when every part
  // was decided with the same rules; --rules-only makes it so).
  recount();
  base.set(kept);
  thumbStats();
  update();  // counts and histograms now; contact sheets (which decode the clip ids) follow
  const loadMs = performance.now() - t0;
  busy = busy.then(drawDedup).then(() => { document.body.dataset.sheetsMs = (performance.now() - t0).toFixed(0); });
  document.body.dataset.ready = '1';
  document.body.dataset.loadMs = loadMs.toFixed(0);
  window.inspect = {
    ready: true, loadMs, exportText, thresholds, fmtG, counts: () => S,
    settled: () => busy,
    recountMs: (name, side, value) => {  // one threshold move, recounted and drawn synchronously (bench)
      const c = cols.find(c => c.name === name);
      if (side === 'min') c.kmin = kForMin(c, value); else c.kmax = kForMax(c, value);
      const t = performance.now();
      recount(); drawBar(); drawReasons(); drawCats(); for (const c of cols) drawHist(c);
      return performance.now() - t;
    },
    keptIds: async () => { const L = await ids(), out = []; for (let i = 0; i < N; i++) if (kept[i]) out.push(L[i].split('\t')[0]); return out; },
    state: () => cols.map(c => ({ name: c.name, kmin: c.kmin, kmax: c.kmax, min: tmin(c), max: tmax(c), nbins: c.nbins })),
    set: (name, side, value) => { const c = cols.find(c => c.name === name); setK(c, side, value === null ? null : side === 'min' ? kForMin(c, value) : kForMax(c, value)); },
  };
})().catch(err => {
  const p = document.getElementById('loading') || document.body.appendChild(document.createElement('p'));
  p.textContent = 'The page failed to load its data: ' + err;
  document.body.dataset.error = String(err);
});
