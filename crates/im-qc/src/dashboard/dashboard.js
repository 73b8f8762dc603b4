/* im-qc live dashboard script (issue 24), served as /dashboard.js next to index.html.
 *
 * Polls GET api/dashboard?since=SEQ every second (Authorization: Bearer TOKEN), merges the new
 * history points into memory (at most MAX_POINTS kept) and redraws the page: header verdict,
 * availability table, charts (inline SVG drawn by lineChart below: no library, no CDN), alerts
 * and the business panel. No page reload, no request to any other host, no message bodies
 * (the API has none). The token comes from the URL fragment `#token=...` (never sent to the
 * server), is kept in sessionStorage and removed from the address bar; on 401 a token form
 * replaces the data.
 *
 * Stable hooks for tests (ids and data attributes):
 *   body[data-live=true|false]        true after the first successful poll (false again while
 *                                     the server is unreachable or refuses the token)
 *   body[data-seq]                    the last seq merged; body[data-points] points in memory
 *   #live[data-state=connecting|live|stale|offline|locked], #last-update (HH:MM:SS, local)
 *   #vendor, #clock (watched clock of the newest point, HH:MM:SS UTC)
 *   #verdict[data-verdict=healthy|degraded|down]   (text: Healthy / Degraded / Down)
 *   #reasons li, #failover (hidden unless failover is recommended)
 *   #seats .seat[data-seat][data-verdict][data-connection]
 *   #availability tbody tr[data-seat][data-window=1m|5m|1h]
 *   #verdict-chart svg[data-points][data-down-points]  (rect.band-down per Down stretch,
 *                                     path.series.verdict the step line 0/1/2)
 *   #ratio-chart, #reconnect-chart, #rtt-chart, #response-rate-chart, #replies-chart,
 *   #first-response-chart: svg > path.series[data-series][data-points] (points = non-null values)
 *   #latency-charts .multiple[data-op][data-network] svg path.series[data-series=p50|p90|p99]
 *   #alerts tbody tr[data-seat][data-rule][data-severity][data-state=firing|resolved]
 *                                     with td.fired-at / td.resolved-at (HH:MM:SS UTC, data-ms)
 *   #response-rate-value              text "83.3%" (one decimal), data-value = the raw number
 *                                     ("" when there is none yet)
 *   #replies-value, #first-response-value, #overdue-count: data-value = the raw number
 *   #overdue tbody tr[data-age-secs], #agents tbody tr[data-agent]
 *   #token-form-box (shown on 401), #token-input, #token-submit
 */
'use strict';

(function () {
  const MAX_POINTS = 4000;
  const POLL_MS = 1000;
  const RETRY_MS = 2000;
  const FETCH_TIMEOUT_MS = 10000;
  const TOKEN_KEY = 'im-qc-dashboard-token';
  const SVGNS = 'http://www.w3.org/2000/svg';
  const VERDICTS = ['healthy', 'degraded', 'down'];
  const OP_ORDER = ['login', 'send', 'pull', 'ack', 'heartbeat'];

  const state = {
    token: '',
    seq: 0,
    points: [],
    latest: null,
    lastOk: null,
    timer: null,
    locked: false,
  };

  // ---------------------------------------------------------------- small helpers

  function $(id) {
    return document.getElementById(id);
  }

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (parent) parent.appendChild(e);
    return e;
  }

  function pad2(n) {
    return (n < 10 ? '0' : '') + n;
  }

  /** Milliseconds since the epoch as HH:MM:SS in UTC. */
  function hms(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '–';
    const d = new Date(ms);
    return pad2(d.getUTCHours()) + ':' + pad2(d.getUTCMinutes()) + ':' + pad2(d.getUTCSeconds());
  }

  function localHms(date) {
    return pad2(date.getHours()) + ':' + pad2(date.getMinutes()) + ':' + pad2(date.getSeconds());
  }

  function isNum(v) {
    return typeof v === 'number' && isFinite(v);
  }

  function pct(v) {
    return isNum(v) ? (v * 100).toFixed(1) + '%' : '–';
  }

  function ms(v) {
    if (!isNum(v)) return '–';
    return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + ' ms';
  }

  function num(v, digits) {
    if (!isNum(v)) return '–';
    return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 2 : digits);
  }

  function secs(v) {
    if (!isNum(v)) return '–';
    if (v < 60) return v.toFixed(1) + ' s';
    const m = Math.floor(v / 60);
    const s = Math.round(v - m * 60);
    if (m < 60) return m + 'm ' + pad2(s) + 's';
    return Math.floor(m / 60) + 'h ' + pad2(m % 60) + 'm';
  }

  function str(v) {
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  /** A ConversationId as serde writes it ({"Direct":{low,high}} or {"Group":g}), readable. */
  function conversation(c) {
    if (typeof c === 'string') return c;
    if (c && c.Direct) return str(c.Direct.low) + ' ↔ ' + str(c.Direct.high);
    if (c && c.Group !== undefined) return '#' + str(c.Group);
    return JSON.stringify(c);
  }

  function setData(e, key, value) {
    e.setAttribute('data-' + key, value === null || value === undefined ? '' : String(value));
  }

  function clear(e) {
    while (e.firstChild) e.removeChild(e.firstChild);
  }

  function show(e, visible) {
    e.classList.toggle('hidden', !visible);
  }

  function td(tr, text, cls) {
    const c = h('td', cls, text);
    tr.appendChild(c);
    return c;
  }

  function minOf(values) {
    let out = null;
    for (const v of values) if (isNum(v) && (out === null || v < out)) out = v;
    return out;
  }

  function maxOf(values) {
    let out = null;
    for (const v of values) if (isNum(v) && (out === null || v > out)) out = v;
    return out;
  }

  function sumOf(values) {
    let out = null;
    for (const v of values) if (isNum(v)) out = (out || 0) + v;
    return out;
  }

  // ---------------------------------------------------------------- charts (inline SVG)

  /** A "nice" upper bound for an axis (1, 2, 2.5 or 5 times a power of ten) and how many
   *  intervals divide it evenly into round steps. */
  function niceAxis(v) {
    if (!(v > 0)) return { max: 1, intervals: 4 };
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const [k, intervals] of [[1, 5], [2, 4], [2.5, 5], [5, 5], [10, 5]]) {
      if (k * p >= v * (1 - 1e-12)) return { max: k * p, intervals: intervals };
    }
    return { max: 10 * p, intervals: 5 };
  }

  /** Decimals needed to write multiples of `step` exactly (0..3). */
  function decimalsFor(step) {
    for (let d = 0; d < 3; d++) {
      const x = step * Math.pow(10, d);
      if (Math.abs(x - Math.round(x)) < 1e-9) return d;
    }
    return 3;
  }

  function lowerBound(xs, x) {
    let lo = 0;
    let hi = xs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Draws a line chart into `box` (replacing what was there).
   * opts.xs: t_ms per point (x spacing), opts.ats: at_ms per point (x labels, HH:MM:SS UTC),
   * opts.series: [{name, cls, values: [number|null per point]}], opts.yMax / opts.yMin fixed
   * bounds (else 0 .. nice max), opts.yTicks: [[value, label]] fixed ticks, opts.yUnit,
   * opts.step: step line, opts.bands(values) -> [{from, to, cls}] index runs shaded behind,
   * opts.height (px), opts.legend (false: none; the card's title names the one series),
   * opts.valueFormat / opts.valueNames: how the hover read-out writes a value.
   */
  function lineChart(box, opts) {
    const width = Math.max(240, Math.floor(box.clientWidth || 600));
    const height = opts.height || 180;
    const m = { l: 56, r: 14, t: 12, b: 26 };
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const root = svg('svg', {
      width: width,
      height: height,
      viewBox: '0 0 ' + width + ' ' + height,
      class: 'chart-svg',
      role: 'img',
    });
    const xs = opts.xs;
    const n = xs.length;
    root.setAttribute('data-points', String(n));

    if (opts.legend !== false && opts.series.length > 0) {
      const legend = h('div', 'legend');
      for (const s of opts.series) {
        const item = h('span', 'legend-item');
        item.appendChild(h('span', 'swatch ' + s.cls));
        item.appendChild(document.createTextNode(s.name));
        legend.appendChild(item);
      }
      clear(box);
      box.appendChild(legend);
    } else {
      clear(box);
    }
    box.appendChild(root);

    if (n === 0) {
      svg('text', { x: m.l + pw / 2, y: m.t + ph / 2, class: 'no-data', 'text-anchor': 'middle' }, root)
        .textContent = 'no data yet';
      for (const s of opts.series) {
        svg('path', { d: '', class: 'series ' + s.cls, 'data-series': s.name, 'data-points': 0 }, root);
      }
      return root;
    }

    const x0 = xs[0];
    const x1 = n > 1 ? xs[n - 1] : xs[0] + 1;
    const xOf = (t) => m.l + ((t - x0) / (x1 - x0 || 1)) * pw;

    const yMin = opts.yMin !== undefined ? opts.yMin : 0;
    let yMax = opts.yMax;
    let intervals = 4;
    if (yMax === undefined) {
      let hi = null;
      for (const s of opts.series) {
        const v = maxOf(s.values);
        if (v !== null && (hi === null || v > hi)) hi = v;
      }
      const axis = niceAxis(hi === null || hi <= 0 ? 1 : hi * 1.05);
      yMax = axis.max;
      intervals = axis.intervals;
    }
    if (yMax <= yMin) yMax = yMin + 1;
    const yOf = (v) => m.t + ph - ((v - yMin) / (yMax - yMin)) * ph;

    // Shaded bands (the verdict chart's coloured stretches).
    if (opts.bands) {
      for (const b of opts.bands) {
        const xa = xOf(xs[b.from]);
        const xb = b.to + 1 < n ? xOf(xs[b.to + 1]) : xOf(xs[b.to]) + Math.max(2, pw / Math.max(n, 1));
        svg('rect', {
          x: xa.toFixed(1),
          y: m.t,
          width: Math.max(1, Math.min(xb, m.l + pw) - xa).toFixed(1),
          height: ph,
          class: 'band ' + b.cls,
        }, root);
      }
    }

    // Y grid and labels.
    const ticks = opts.yTicks || (function () {
      const out = [];
      const step = (yMax - yMin) / intervals;
      const digits = decimalsFor(step);
      const unit = opts.yUnit || '';
      for (let i = 0; i <= intervals; i++) {
        const v = yMin + step * i;
        out.push([v, v.toFixed(digits) + unit]);
      }
      return out;
    })();
    for (const [v, label] of ticks) {
      const y = yOf(v).toFixed(1);
      svg('line', { x1: m.l, x2: m.l + pw, y1: y, y2: y, class: 'grid' }, root);
      svg('text', { x: m.l - 6, y: y, class: 'axis-label', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, root)
        .textContent = label;
    }

    // X axis: ticks evenly spaced in t_ms, labelled with the watched clock of the nearest point.
    svg('line', { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: 'axis' }, root);
    const nx = Math.max(2, Math.min(8, Math.floor(pw / 110)));
    for (let i = 0; i <= nx; i++) {
      const t = x0 + ((x1 - x0) * i) / nx;
      let k = Math.min(n - 1, lowerBound(xs, t));
      if (k > 0 && Math.abs(xs[k - 1] - t) < Math.abs(xs[k] - t)) k -= 1;
      const x = xOf(t);
      svg('line', { x1: x.toFixed(1), x2: x.toFixed(1), y1: m.t + ph, y2: m.t + ph + 4, class: 'axis' }, root);
      const anchor = i === 0 ? 'start' : i === nx ? 'end' : 'middle';
      svg('text', { x: x.toFixed(1), y: m.t + ph + 17, class: 'axis-label', 'text-anchor': anchor }, root)
        .textContent = hms(opts.ats[k]);
    }

    // Series: gaps where a value is null.
    for (const s of opts.series) {
      let d = '';
      let pen = false;
      let count = 0;
      let last = null;
      let prevY = 0;
      for (let i = 0; i < n; i++) {
        const v = s.values[i];
        if (!isNum(v)) {
          pen = false;
          continue;
        }
        const x = xOf(xs[i]).toFixed(1);
        const y = yOf(Math.max(yMin, Math.min(yMax, v))).toFixed(1);
        if (!pen) d += 'M' + x + ' ' + y;
        else if (opts.step) d += 'H' + x + 'V' + y;
        else d += 'L' + x + ' ' + y;
        if (opts.step && pen && prevY === y) d = d.replace(/V[-0-9.]+$/, '');
        pen = true;
        prevY = y;
        count += 1;
        last = [x, y];
      }
      svg('path', { d: d, class: 'series ' + s.cls, 'data-series': s.name, 'data-points': count }, root);
      if (last) svg('circle', { cx: last[0], cy: last[1], r: 2.5, class: 'last-dot ' + s.cls }, root);
    }
    hover(box, root, opts, { xOf: xOf, yOf: yOf, m: m, pw: pw, ph: ph, yMin: yMin, yMax: yMax });
    return root;
  }

  /**
   * The read-out under the pointer: a vertical rule at the nearest point and a box with its
   * watched-clock time and each series' value. Kept across the once-a-second redraws (the
   * hovered t_ms is remembered on the chart's box).
   */
  function hover(box, root, opts, g) {
    const xs = opts.xs;
    const n = xs.length;
    if (n === 0) return;
    const layer = svg('g', { class: 'hover hidden' }, root);
    const rule = svg('line', { y1: g.m.t, y2: g.m.t + g.ph, class: 'hover-rule' }, layer);
    const bg = svg('rect', { rx: 4, ry: 4, class: 'hover-box' }, layer);
    const fmt = opts.valueFormat || ((v) => num(v, 3));
    const place = (t) => {
      let k = Math.min(n - 1, lowerBound(xs, t));
      if (k > 0 && Math.abs(xs[k - 1] - t) < Math.abs(xs[k] - t)) k -= 1;
      const x = g.xOf(xs[k]);
      rule.setAttribute('x1', x.toFixed(1));
      rule.setAttribute('x2', x.toFixed(1));
      for (const old of Array.from(layer.querySelectorAll('text, circle'))) layer.removeChild(old);
      const lines = [[hms(opts.ats[k]) + ' UTC', 'hover-time']];
      for (const s of opts.series) {
        const v = s.values[k];
        lines.push([s.name + ': ' + (isNum(v) ? (opts.valueNames ? opts.valueNames[v] || fmt(v) : fmt(v)) : '–'), 'hover-text']);
        if (isNum(v)) {
          const y = g.yOf(Math.max(g.yMin, Math.min(g.yMax, v)));
          svg('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: 3.5, class: 'hover-dot ' + s.cls }, layer);
        }
      }
      let width = 0;
      const texts = lines.map(([text, cls], i) => {
        const e = svg('text', { x: 0, y: 0, class: cls }, layer);
        e.textContent = text;
        width = Math.max(width, e.getComputedTextLength ? e.getComputedTextLength() : text.length * 6.5);
        return [e, i];
      });
      const boxW = width + 16;
      const boxH = lines.length * 15 + 8;
      let bx = x + 10;
      if (bx + boxW > g.m.l + g.pw) bx = x - 10 - boxW;
      bx = Math.max(0, bx);
      const by = g.m.t + 2;
      bg.setAttribute('x', bx.toFixed(1));
      bg.setAttribute('y', by.toFixed(1));
      bg.setAttribute('width', boxW.toFixed(1));
      bg.setAttribute('height', boxH.toFixed(1));
      for (const [e, i] of texts) {
        e.setAttribute('x', (bx + 8).toFixed(1));
        e.setAttribute('y', (by + 15 + i * 15).toFixed(1));
      }
      layer.classList.remove('hidden');
    };
    const overlay = svg('rect', { x: g.m.l, y: g.m.t, width: g.pw, height: g.ph, class: 'hover-catch' }, root);
    root.insertBefore(overlay, layer);
    overlay.addEventListener('mousemove', (ev) => {
      const r = root.getBoundingClientRect();
      const px = ev.clientX - r.left;
      const t = xs[0] + ((px - g.m.l) / g.pw) * ((n > 1 ? xs[n - 1] : xs[0] + 1) - xs[0]);
      box.setAttribute('data-hover-t', String(t));
      place(t);
    });
    overlay.addEventListener('mouseleave', () => {
      box.removeAttribute('data-hover-t');
      layer.classList.add('hidden');
    });
    const kept = box.getAttribute('data-hover-t');
    if (kept !== null && isFinite(Number(kept))) place(Number(kept));
  }

  // ---------------------------------------------------------------- token handling

  function readToken() {
    const raw = location.hash.replace(/^#/, '');
    const params = new URLSearchParams(raw);
    const fromHash = params.get('token');
    if (fromHash !== null) {
      state.token = fromHash;
      try {
        sessionStorage.setItem(TOKEN_KEY, fromHash);
      } catch (e) {
        /* storage disabled: keep it in memory only */
      }
      params.delete('token');
      const rest = params.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
      return;
    }
    try {
      state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      state.token = '';
    }
  }

  function showTokenForm(message) {
    state.locked = true;
    $('token-message').textContent = message;
    show($('token-form-box'), true);
    show($('content'), false);
    $('token-input').focus();
  }

  function onTokenSubmit(ev) {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    state.token = t;
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (e) {
      /* memory only */
    }
    $('token-input').value = '';
    state.locked = false;
    show($('token-form-box'), false);
    show($('content'), true);
    setLive('connecting', 'connecting');
    schedule(0);
  }

  // ---------------------------------------------------------------- polling

  function setLive(stateName, text) {
    const live = $('live');
    live.setAttribute('data-state', stateName);
    $('live-text').textContent = text;
    document.body.setAttribute('data-live', stateName === 'live' || stateName === 'stale' ? 'true' : 'false');
  }

  function schedule(delay) {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = setTimeout(poll, delay);
  }

  async function poll() {
    state.timer = null;
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let resp;
    // A server that stops answering must not stop the polling: each fetch has a deadline.
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      resp = await fetch('api/dashboard?since=' + state.seq, {
        headers: headers,
        cache: 'no-store',
        signal: abort.signal,
      });
    } catch (e) {
      clearTimeout(deadline);
      setLive('offline', 'server unreachable');
      $('error').textContent = 'cannot reach the metrics server; retrying';
      schedule(RETRY_MS);
      return;
    }
    if (!resp.ok) clearTimeout(deadline);
    if (resp.status === 401) {
      setLive('locked', 'token needed');
      showTokenForm(state.token ? 'The token was refused. Enter the dashboard token:' : 'This dashboard needs its bearer token:');
      return;
    }
    if (resp.status === 429) {
      const after = parseInt(resp.headers.get('Retry-After') || '5', 10);
      setLive('locked', 'too many attempts');
      showTokenForm('Too many failed attempts; wait ' + after + ' s and enter the token again.');
      return;
    }
    if (!resp.ok) {
      setLive('offline', 'error ' + resp.status);
      $('error').textContent = 'the server answered ' + resp.status + '; retrying';
      schedule(RETRY_MS);
      return;
    }
    let data;
    try {
      data = await resp.json();
    } catch (e) {
      clearTimeout(deadline);
      setLive('offline', 'bad answer');
      schedule(RETRY_MS);
      return;
    }
    clearTimeout(deadline);
    const restarted = merge(data);
    state.lastOk = new Date();
    $('error').textContent = '';
    setLive('live', 'live');
    try {
      render(data);
    } catch (e) {
      $('error').textContent = 'render error: ' + e.message;
    }
    // After a server restart, fetch its whole history at once.
    schedule(restarted ? 0 : POLL_MS);
  }

  /** Adds the answer's new points; returns true when the server restarted (its seq went
   *  back), after which the history starts over from seq 0. */
  function merge(data) {
    let restarted = false;
    if (typeof data.seq === 'number' && data.seq < state.seq) {
      state.points = [];
      state.seq = 0;
      restarted = true;
    }
    const pts = Array.isArray(data.points) ? data.points : [];
    for (const p of pts) {
      const newest = state.points.length ? state.points[state.points.length - 1].seq : 0;
      if (p.seq > newest) state.points.push(p);
    }
    if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
    const lastSeq = state.points.length ? state.points[state.points.length - 1].seq : 0;
    state.seq = restarted ? 0 : Math.max(typeof data.seq === 'number' ? data.seq : 0, lastSeq);
    state.latest = data;
    document.body.setAttribute('data-seq', String(state.seq));
    document.body.setAttribute('data-points', String(state.points.length));
    return restarted;
  }

  function tickAge() {
    if (!state.lastOk) return;
    const age = (Date.now() - state.lastOk.getTime()) / 1000;
    $('last-update').textContent = localHms(state.lastOk) + (age >= 3 ? ' (' + Math.round(age) + ' s ago)' : '');
    const live = $('live').getAttribute('data-state');
    if (age >= 5 && live === 'live') setLive('stale', 'stale');
  }

  // ---------------------------------------------------------------- rendering

  function render(data) {
    renderHeader(data);
    renderAvailability(data);
    renderCharts();
    renderAlerts(data);
    renderDesk(data);
    tickAge();
  }

  function renderHeader(data) {
    $('vendor').textContent = data.vendor || '?';
    const seats = data.seats || [];
    $('seat-count').textContent = seats.length + (seats.length === 1 ? ' seat' : ' seats');
    const v = (data.verdict && data.verdict.verdict) || 'unknown';
    const vEl = $('verdict');
    vEl.setAttribute('data-verdict', v);
    vEl.textContent = v.charAt(0).toUpperCase() + v.slice(1);
    show($('failover'), !!(data.verdict && data.verdict.failover_recommended));
    const reasons = $('reasons');
    clear(reasons);
    for (const r of (data.verdict && data.verdict.reasons) || []) reasons.appendChild(h('li', null, r));
    const last = state.points[state.points.length - 1];
    $('clock').textContent = hms(last ? last.at_ms : seats[0] && seats[0].snapshot && seats[0].snapshot.at_ms);

    const box = $('seats');
    clear(box);
    for (const s of seats) {
      const snap = s.snapshot || {};
      const sv = (snap.verdict && snap.verdict.verdict) || 'unknown';
      const chip = h('span', 'seat');
      setData(chip, 'seat', s.name);
      setData(chip, 'verdict', sv);
      setData(chip, 'connection', str(snap.connection));
      chip.appendChild(h('span', 'seat-dot v-' + sv));
      chip.appendChild(h('span', 'seat-name', s.name));
      chip.appendChild(h('span', 'seat-conn', str(snap.connection || '')));
      box.appendChild(chip);
    }
  }

  function renderAvailability(data) {
    const body = $('availability').querySelector('tbody');
    clear(body);
    for (const s of data.seats || []) {
      const rows = (s.snapshot && s.snapshot.availability) || [];
      rows.forEach((a, i) => {
        const tr = h('tr', i === 0 ? 'seat-first' : null);
        setData(tr, 'seat', s.name);
        setData(tr, 'window', a.window);
        td(tr, i === 0 ? s.name : '', 'seat-cell');
        td(tr, a.window);
        td(tr, num(a.calls, 0), 'n');
        td(tr, num(a.errors, 0), 'n' + (a.errors > 0 ? ' warn' : ''));
        td(tr, pct(a.success_ratio), 'n ' + ratioClass(a.success_ratio));
        td(tr, pct(a.uptime_ratio), 'n ' + ratioClass(a.uptime_ratio));
        td(tr, num(a.reconnects, 0), 'n' + (a.reconnects > 0 ? ' warn' : ''));
        td(tr, num(a.heartbeat_misses, 0), 'n' + (a.heartbeat_misses > 0 ? ' warn' : ''));
        td(tr, ms(a.heartbeat_rtt_p50_ms), 'n');
        body.appendChild(tr);
      });
    }
  }

  function ratioClass(v) {
    if (!isNum(v)) return '';
    return v >= 0.99 ? 'good' : v >= 0.9 ? 'warn' : 'bad';
  }

  function rateClass(v) {
    if (!isNum(v)) return '';
    return v >= 0.9 ? 'good' : v >= 0.7 ? 'warn' : 'bad';
  }

  function verdictBands(values) {
    const out = [];
    let start = -1;
    for (let i = 0; i <= values.length; i++) {
      const v = i < values.length ? values[i] : null;
      if (start >= 0 && (i === values.length || v !== values[start])) {
        if (isNum(values[start])) {
          out.push({ from: start, to: i - 1, cls: 'band-' + (VERDICTS[values[start]] || 'unknown') });
        }
        start = -1;
      }
      if (start < 0 && i < values.length) start = i;
    }
    return out;
  }

  function latencyKeys(points) {
    const seen = new Map();
    for (const p of points) {
      for (const s of p.seats || []) {
        for (const l of s.latency || []) {
          const key = l.op + '\u0000' + l.network;
          if (!seen.has(key)) seen.set(key, { op: l.op, network: l.network });
        }
      }
    }
    const rank = (op) => {
      const i = OP_ORDER.indexOf(op);
      return i < 0 ? OP_ORDER.length : i;
    };
    return Array.from(seen.values()).sort(
      (a, b) => rank(a.op) - rank(b.op) || String(a.op).localeCompare(String(b.op)) ||
        String(a.network).localeCompare(String(b.network)),
    );
  }

  function renderCharts() {
    const pts = state.points;
    const xs = pts.map((p) => p.t_ms);
    const ats = pts.map((p) => p.at_ms);
    const seatsOf = (p) => p.seats || [];

    const verdicts = pts.map((p) => (isNum(p.verdict) ? p.verdict : null));
    const vs = lineChart($('verdict-chart'), {
      xs, ats, height: 130, step: true, yMin: 0, yMax: 2,
      yTicks: [[0, 'healthy'], [1, 'degraded'], [2, 'down']],
      series: [{ name: 'verdict', cls: 'verdict', values: verdicts }],
      valueNames: VERDICTS,
      bands: verdictBands(verdicts),
      legend: false,
    });
    vs.setAttribute('data-down-points', String(verdicts.filter((v) => v === 2).length));

    lineChart($('ratio-chart'), {
      xs, ats, yMin: 0, yMax: 1, height: 220,
      yTicks: [[0, '0%'], [0.25, '25%'], [0.5, '50%'], [0.75, '75%'], [1, '100%']],
      valueFormat: pct,
      series: [
        { name: 'success ratio', cls: 's1', values: pts.map((p) => minOf(seatsOf(p).map((s) => s.success_ratio_1m))) },
        { name: 'uptime', cls: 's2', values: pts.map((p) => minOf(seatsOf(p).map((s) => s.uptime_ratio_1m))) },
      ],
    });

    lineChart($('reconnect-chart'), {
      xs, ats, height: 110,
      series: [
        { name: 'reconnects', cls: 's3', values: pts.map((p) => sumOf(seatsOf(p).map((s) => s.reconnects_1m))) },
        { name: 'heartbeat misses', cls: 's4', values: pts.map((p) => sumOf(seatsOf(p).map((s) => s.heartbeat_misses_1m))) },
      ],
    });
    lineChart($('rtt-chart'), {
      xs, ats, height: 110, yUnit: ' ms', valueFormat: ms,
      series: [{ name: 'heartbeat RTT', cls: 's5', values: pts.map((p) => maxOf(seatsOf(p).map((s) => s.heartbeat_rtt_ms_1m))) }],
    });

    renderLatency(pts, xs, ats);

    const desk = (p, k) => (p.desk && isNum(p.desk[k]) ? p.desk[k] : null);
    lineChart($('response-rate-chart'), {
      xs, ats, yMin: 0, yMax: 1, height: 160, legend: false,
      yTicks: [[0, '0%'], [0.5, '50%'], [1, '100%']],
      valueFormat: pct,
      series: [{ name: 'response rate', cls: 's1', values: pts.map((p) => desk(p, 'response_rate')) }],
    });
    lineChart($('replies-chart'), {
      xs, ats, height: 160, legend: false,
      series: [{ name: 'replies', cls: 's2', values: pts.map((p) => desk(p, 'replies_per_conversation_per_hour')) }],
    });
    lineChart($('first-response-chart'), {
      xs, ats, height: 160, legend: false,
      valueFormat: secs,
      series: [{ name: 'first response p50', cls: 's3', values: pts.map((p) => desk(p, 'first_response_p50_secs')) }],
    });
  }

  function renderLatency(pts, xs, ats) {
    const box = $('latency-charts');
    const keys = latencyKeys(pts);
    const wanted = new Set();
    for (const k of keys) {
      const id = 'lat-' + k.op + '-' + k.network;
      wanted.add(id);
      let cell = box.querySelector('[data-key="' + CSS.escape(id) + '"]');
      if (!cell) {
        cell = h('div', 'multiple');
        setData(cell, 'key', id);
        setData(cell, 'op', k.op);
        setData(cell, 'network', k.network);
        const title = h('h4');
        title.appendChild(h('span', 'op', k.op));
        title.appendChild(h('span', 'net', k.network));
        cell.appendChild(title);
        cell.appendChild(h('div', 'chart small'));
        box.appendChild(cell);
      }
      const pick = (p, q) => maxOf((p.seats || []).map((s) => {
        const l = (s.latency || []).find((x) => x.op === k.op && x.network === k.network);
        return l ? l[q] : null;
      }));
      lineChart(cell.querySelector('.chart'), {
        xs, ats, height: 150, valueFormat: ms,
        series: [
          { name: 'p50', cls: 'p50', values: pts.map((p) => pick(p, 'p50')) },
          { name: 'p90', cls: 'p90', values: pts.map((p) => pick(p, 'p90')) },
          { name: 'p99', cls: 'p99', values: pts.map((p) => pick(p, 'p99')) },
        ],
      });
    }
    for (const cell of Array.from(box.children)) {
      if (!wanted.has(cell.getAttribute('data-key'))) box.removeChild(cell);
    }
    // Keep the small multiples in operation order as new ones appear (appending moves).
    for (const k of keys) {
      const cell = box.querySelector('[data-key="' + CSS.escape('lat-' + k.op + '-' + k.network) + '"]');
      if (cell) box.appendChild(cell);
    }
    if (keys.length === 0 && !box.querySelector('.empty')) box.appendChild(h('p', 'empty', 'No calls measured yet.'));
    if (keys.length > 0) for (const e of Array.from(box.querySelectorAll('.empty'))) box.removeChild(e);
  }

  function alertLog(data) {
    if (Array.isArray(data.alert_log)) return data.alert_log;
    // Older servers: gather the seats' own logs.
    const out = [];
    for (const s of data.seats || []) {
      for (const a of (s.snapshot && s.snapshot.alert_log) || []) out.push(Object.assign({ seat: s.name }, a));
    }
    out.sort((a, b) => b.fired_at_ms - a.fired_at_ms);
    return out;
  }

  function renderAlerts(data) {
    const body = $('alerts').querySelector('tbody');
    clear(body);
    const log = alertLog(data);
    for (const a of log) {
      const firing = a.resolved_at_ms === null || a.resolved_at_ms === undefined;
      const tr = h('tr', firing ? 'firing sev-' + a.severity : 'resolved');
      setData(tr, 'seat', a.seat);
      setData(tr, 'rule', a.rule);
      setData(tr, 'severity', a.severity);
      setData(tr, 'state', firing ? 'firing' : 'resolved');
      const stateCell = td(tr, '');
      stateCell.appendChild(h('span', 'pill ' + (firing ? 'pill-firing' : 'pill-resolved'), firing ? 'firing' : 'resolved'));
      td(tr, a.seat);
      td(tr, a.rule, 'mono');
      const sev = td(tr, '');
      sev.appendChild(h('span', 'sev sev-' + a.severity, a.severity));
      td(tr, isNum(a.value) ? num(a.value, 3) : '–', 'n');
      const f = td(tr, hms(a.fired_at_ms), 'fired-at mono');
      setData(f, 'ms', a.fired_at_ms);
      const r = td(tr, firing ? '–' : hms(a.resolved_at_ms), 'resolved-at mono');
      setData(r, 'ms', firing ? '' : a.resolved_at_ms);
      body.appendChild(tr);
    }
    show($('alerts-empty'), log.length === 0);
    show($('alerts'), log.length > 0);
  }

  function setValue(id, raw, text) {
    const e = $(id);
    e.textContent = text;
    setData(e, 'value', isNum(raw) ? raw : '');
  }

  function renderDesk(data) {
    const desk = data.desk;
    show($('desk-none'), !desk);
    const last = state.points[state.points.length - 1];
    const lastDesk = last && last.desk;
    const rr = desk ? desk.response_rate : null;
    setValue('response-rate-value', rr, pct(rr));
    $('response-rate-value').className = 'value ' + rateClass(rr);
    const rpc = desk ? desk.replies_per_conversation_per_hour : null;
    setValue('replies-value', rpc, num(rpc, 2));
    const frt = lastDesk ? lastDesk.first_response_p50_secs : null;
    setValue('first-response-value', frt, secs(frt));

    const overdue = (desk && desk.overdue) || [];
    const count = $('overdue-count');
    count.textContent = String(overdue.length);
    setData(count, 'value', overdue.length);
    count.className = 'value ' + (overdue.length > 0 ? 'bad' : 'good');
    const ob = $('overdue').querySelector('tbody');
    clear(ob);
    for (const row of overdue) {
      const c = Array.isArray(row) ? row[0] : row;
      const age = Array.isArray(row) ? row[1] : null;
      const tr = h('tr');
      setData(tr, 'age-secs', age);
      td(tr, conversation(c), 'mono');
      td(tr, secs(age), 'n bad');
      ob.appendChild(tr);
    }
    show($('overdue-empty'), overdue.length === 0);
    show($('overdue'), overdue.length > 0);

    const ab = $('agents').querySelector('tbody');
    clear(ab);
    for (const a of (desk && desk.agents) || []) {
      const tr = h('tr');
      setData(tr, 'agent', str(a.agent));
      td(tr, str(a.agent));
      td(tr, num(a.inbound, 0), 'n');
      td(tr, num(a.answered_in_time, 0), 'n');
      td(tr, pct(a.response_rate), 'n');
      td(tr, num(a.replies, 0), 'n');
      td(tr, secs(a.first_response_p50_secs), 'n');
      ab.appendChild(tr);
    }
  }

  // ---------------------------------------------------------------- start

  let resizeTimer = null;
  function onResize() {
    if (resizeTimer !== null) clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (state.latest) renderCharts();
    }, 150);
  }

  function start() {
    readToken();
    $('token-form').addEventListener('submit', onTokenSubmit);
    window.addEventListener('resize', onResize);
    setInterval(tickAge, 1000);
    renderCharts();
    schedule(0);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
