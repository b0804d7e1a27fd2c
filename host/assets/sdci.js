// sdci job pages: times in the viewer's zone, the live log (server-sent events), line anchors,
// earlier lines on demand, live steps and states, and the job list's refresh.
// Served by sdci-host itself (no CDN). Plain script, no library.
//
// Safety: text from the server (log lines, names) only ever reaches the page through
// textContent / createTextNode, never as markup.
(function () {
  'use strict';

  // ---- times and durations ------------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, '0');
  function localTime(ms) {
    const d = new Date(ms);
    const zone = (Intl.DateTimeFormat().resolvedOptions().timeZone || '');
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) +
      (zone ? ' ' + zone : '');
  }
  function duration(ms) {
    ms = Math.max(0, ms);
    const s = Math.floor(ms / 1000);
    if (s >= 3600) return Math.floor(s / 3600) + ' h ' + pad(Math.floor(s / 60) % 60) + ' min';
    if (s >= 60) return Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
    return (ms / 1000).toFixed(1) + ' s';
  }
  function relative(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' days ago';
  }
  function showTimes(root) {
    root.querySelectorAll('time[data-ms]').forEach((t) => {
      const ms = Number(t.dataset.ms);
      t.textContent = localTime(ms);
      t.title = new Date(ms).toISOString() + ' (' + relative(ms) + ')';
    });
    root.querySelectorAll('.rel[data-ms]').forEach((e) => {
      e.textContent = '(' + relative(Number(e.dataset.ms)) + ')';
    });
  }
  function tick() {
    document.querySelectorAll('[data-started]').forEach((e) => {
      e.textContent = duration(Date.now() - Number(e.dataset.started));
    });
    document.querySelectorAll('.rel[data-ms]').forEach((e) => {
      e.textContent = '(' + relative(Number(e.dataset.ms)) + ')';
    });
  }

  // ---- ANSI colours: the rules of host/src/surface/web/ansi.rs --------------------------------
  function sgr(st, params) {
    const codes = params === '' ? [0] : params.split(';').map((p) => (/^\d+$/.test(p) ? Number(p) : 65535));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { st.b = st.d = st.i = st.u = false; st.f = st.g = null; }
      else if (c === 1) st.b = true;
      else if (c === 2) st.d = true;
      else if (c === 3) st.i = true;
      else if (c === 4) st.u = true;
      else if (c === 22) { st.b = false; st.d = false; }
      else if (c === 23) st.i = false;
      else if (c === 24) st.u = false;
      else if (c >= 30 && c <= 37) st.f = c - 30;
      else if (c >= 90 && c <= 97) st.f = c - 90 + 8;
      else if (c === 39) st.f = null;
      else if (c >= 40 && c <= 47) st.g = c - 40;
      else if (c >= 100 && c <= 107) st.g = c - 100 + 8;
      else if (c === 49) st.g = null;
      else if (c === 38 || c === 48) {
        let colour = null;
        if (codes[i + 1] === 5) {
          const n = codes[i + 2];
          i += 2;
          if (n !== undefined && n < 16) colour = n;
        } else if (codes[i + 1] === 2) {
          i += 4;
        }
        if (c === 38) st.f = colour; else st.g = colour;
      }
    }
  }
  function classOf(st) {
    const c = [];
    if (st.b) c.push('a-b');
    if (st.d) c.push('a-d');
    if (st.i) c.push('a-i');
    if (st.u) c.push('a-u');
    if (st.f !== null) c.push('a-f' + st.f);
    if (st.g !== null) c.push('a-g' + st.g);
    return c.join(' ');
  }
  function runs(line) {
    const out = [];
    const st = { b: false, d: false, i: false, u: false, f: null, g: null };
    let start = 0;
    let i = 0;
    while (i < line.length) {
      let open = 0;
      if (line.startsWith('\\x1b[', i)) open = 5;
      else if (line.charCodeAt(i) === 27 && line[i + 1] === '[') open = 2;
      if (open) {
        let j = i + open;
        while (j < line.length && ((line[j] >= '0' && line[j] <= '9') || line[j] === ';')) j++;
        if (line[j] === 'm') {
          if (start < i) out.push([classOf(st), line.slice(start, i)]);
          sgr(st, line.slice(i + open, j));
          i = j + 1;
          start = i;
          continue;
        }
      }
      i++;
    }
    if (start < line.length) out.push([classOf(st), line.slice(start)]);
    return out;
  }

  // ---- one line, as surface/web/pages.rs renders it -----------------------------------------
  function lineEl(prefix, n, text) {
    const d = document.createElement('div');
    d.className = 'ln';
    d.id = prefix + n;
    const a = document.createElement('a');
    a.className = 'no';
    a.href = '#' + prefix + n;
    a.textContent = String(n);
    const s = document.createElement('span');
    s.className = 'tx';
    for (const [cls, t] of runs(text)) {
      if (!cls) {
        s.appendChild(document.createTextNode(t));
      } else {
        const e = document.createElement('span');
        e.className = cls;
        e.textContent = t;
        s.appendChild(e);
      }
    }
    d.append(a, s);
    return d;
  }

  // What the tests and the benchmark read: when each streamed line reached the DOM.
  const stats = { received: [], events: 0, connects: 0, replaced: 0 };
  window.sdciStats = stats;
  const now = () => performance.timeOrigin + performance.now();

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(url + ': ' + r.status);
    return r.json();
  }

  // ---- a log viewer: one attempt's lines [lo, hi) in the DOM ----------------------------------
  class Viewer {
    constructor(el) {
      this.el = el;
      this.job = el.dataset.job;
      this.attempt = Number(el.dataset.attempt);
      this.prefix = el.dataset.prefix;
      this.gen = Number(el.dataset.gen || 0);
      this.lo = Number(el.dataset.from);
      this.hi = Number(el.dataset.next);
      this.total = Number(el.dataset.total);
      this.live = el.dataset.live === '1';
      this.lines = el.querySelector('.lines');
      this.section = el.closest('details.attempt');
      this.follow = this.section ? this.section.querySelector('.follow input') : null;
      this.count = this.section ? this.section.querySelector('.logtools .count') : null;
      this.more = null;
      const earlier = el.querySelector('button.earlier');
      if (earlier) earlier.addEventListener('click', () => this.earlier());
      if (this.live) this.connect();
    }
    api(from, limit) {
      return '/api/v1/jobs/' + encodeURIComponent(this.job) + '/log?attempt=' + this.attempt +
        '&from=' + from + '&limit=' + limit;
    }
    atBottom() {
      return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
    }
    following() {
      return this.follow ? this.follow.checked : false;
    }
    contiguous() {
      return this.hi >= this.total;
    }
    render(from, lines) {
      const f = document.createDocumentFragment();
      lines.forEach((t, i) => f.appendChild(lineEl(this.prefix, from + i + 1, t)));
      return f;
    }
    setCount() {
      if (this.count) this.count.textContent = this.total + ' lines';
    }
    // Lines from the stream: appended only where they continue what is shown.
    onLines(d) {
      stats.events++;
      this.total = Math.max(this.total, d.total, d.from + d.lines.length);
      this.setCount();
      if (!(this.hi >= d.from && this.hi < d.from + d.lines.length)) {
        if (this.hi < d.from) this.showMore();
        return;
      }
      if (this.more && this.contiguous()) { this.more.remove(); this.more = null; }
      const skip = this.hi - d.from;
      const fresh = d.lines.slice(skip);
      const stick = this.following() && this.atBottom();
      this.lines.appendChild(this.render(this.hi, fresh));
      const t = now();
      for (let i = 0; i < fresh.length; i++) {
        if (stats.received.length < 200000) stats.received.push([this.hi + i + 1, t]);
      }
      this.hi += fresh.length;
      if (stick) this.el.scrollTop = this.el.scrollHeight;
    }
    showMore() {
      if (this.more) {
        this.more.textContent = (this.total - this.hi) + ' newer lines: show';
        return;
      }
      this.more = document.createElement('button');
      this.more.type = 'button';
      this.more.className = 'newlines';
      this.more.addEventListener('click', () => this.window(Math.max(0, this.total - 1000), true));
      this.el.appendChild(this.more);
      this.showMore();
    }
    connect() {
      if (this.es) return;
      const url = '/api/v1/jobs/' + encodeURIComponent(this.job) + '/log/stream?attempt=' +
        this.attempt + '&from=' + this.hi + '&gen=' + this.gen;
      const es = new EventSource(url);
      this.es = es;
      es.addEventListener('open', () => { stats.connects++; });
      es.addEventListener('lines', (e) => {
        const d = JSON.parse(e.data);
        if (this.gen && d.generation !== this.gen) return;
        this.gen = d.generation;
        this.onLines(d);
      });
      es.addEventListener('replaced', (e) => this.replaced(JSON.parse(e.data)));
      es.addEventListener('state', (e) => progress(JSON.parse(e.data), this));
      es.addEventListener('end', () => {
        es.close();
        this.es = null;
        this.live = false;
        const f = this.follow ? this.follow.closest('label') : null;
        if (f) f.remove();
      });
    }
    // dom0's copy replaced the streamed one: show the same part of the new generation, keeping
    // what is on screen where it is.
    async replaced(d) {
      stats.replaced++;
      const stick = this.atBottom();
      const top = this.firstVisible();
      const hash = location.hash.slice(1);
      const oldHashText = this.textOf(hash);
      this.gen = d.generation;
      this.total = d.total;
      this.setCount();
      const keep = Math.min(Math.max(this.hi - this.lo, 1000), 5000);
      await this.window(Math.max(0, d.total - keep), false, d.total);
      if (stick) {
        this.el.scrollTop = this.el.scrollHeight;
      } else if (top) {
        const again = this.findText(top.text);
        if (again) this.el.scrollTop += again.getBoundingClientRect().top - top.y;
      }
      if (oldHashText !== null) {
        const again = this.findText(oldHashText);
        if (again) history.replaceState(null, '', '#' + again.id);
      }
    }
    textOf(id) {
      const e = id && id.startsWith(this.prefix) ? document.getElementById(id) : null;
      return e ? e.querySelector('.tx').textContent : null;
    }
    findText(text) {
      for (const e of this.lines.children) {
        if (e.querySelector('.tx').textContent === text) return e;
      }
      return null;
    }
    firstVisible() {
      const box = this.el.getBoundingClientRect();
      for (const e of this.lines.children) {
        const r = e.getBoundingClientRect();
        if (r.bottom > box.top) return { text: e.querySelector('.tx').textContent, y: r.top };
      }
      return null;
    }
    // Replaces what is shown by lines [from, upto) (upto: as many as one answer gives).
    async window(from, scrollEnd, upto) {
      let lines = [];
      let next = from;
      let total = this.total;
      do {
        const want = upto === undefined ? 1000 : Math.min(5000, upto - next);
        if (want <= 0) break;
        const d = await getJSON(this.api(next, want));
        if (d.generation !== this.gen && this.gen) { this.gen = d.generation; }
        lines = lines.concat(d.lines);
        total = d.total;
        if (d.lines.length === 0) break;
        next = d.next;
      } while (upto !== undefined && next < upto);
      this.lines.replaceChildren(this.render(from, lines));
      this.lo = from;
      this.hi = from + lines.length;
      this.total = Math.max(total, this.hi);
      if (this.more) { this.more.remove(); this.more = null; }
      this.earlierButton();
      if (scrollEnd) this.el.scrollTop = this.el.scrollHeight;
    }
    earlierButton() {
      let b = this.el.querySelector('button.earlier');
      if (this.lo > 0) {
        if (!b) {
          b = document.createElement('button');
          b.type = 'button';
          b.className = 'earlier';
          b.addEventListener('click', () => this.earlier());
          this.el.insertBefore(b, this.lines);
        }
        b.textContent = 'Show earlier lines (' + this.lo + ' more)';
      } else if (b) {
        b.remove();
      }
    }
    async earlier() {
      if (this.lines.children.length === 0 && this.total > 0) {
        await this.window(Math.max(0, this.total - 1000), true, this.total);
        return;
      }
      const from = Math.max(0, this.lo - 1000);
      const d = await getJSON(this.api(from, this.lo - from));
      const before = this.el.scrollHeight;
      this.lines.insertBefore(this.render(d.from, d.lines), this.lines.firstChild);
      this.lo = d.from;
      this.el.scrollTop += this.el.scrollHeight - before;
      this.earlierButton();
    }
    // Shows line n (from 1), loading the lines around it when they are not on the page.
    async reveal(n) {
      if (!(n > this.lo && n <= this.hi)) {
        await this.window(Math.max(0, n - 1 - 200), false);
        if (this.live && !this.contiguous()) this.showMore();
      }
      const e = document.getElementById(this.prefix + n);
      if (e) {
        if (this.section && !this.section.open) this.section.open = true;
        document.querySelectorAll('.ln.hl').forEach((x) => x.classList.remove('hl'));
        e.classList.add('hl');
        e.scrollIntoView({ block: 'center' });
      }
    }
  }

  // ---- the job's live progress (state events) ----------------------------------------------
  function progress(p, viewer) {
    const head = document.querySelector('.jobhead');
    if (!head) return;
    const shown = Number(head.dataset.attempts);
    if (p.attempt !== shown) {
      // A new attempt began: its section does not exist yet.
      location.reload();
      return;
    }
    if (head.dataset.state !== p.state) {
      head.dataset.state = p.state;
      document.querySelectorAll('.jobhead .badge').forEach((b) => {
        b.className = 'badge s-' + p.state;
        b.textContent = p.state;
        b.dataset.state = p.state;
      });
      document.title = p.state + ' · job ' + head.dataset.job;
    }
    const section = viewer ? viewer.section : null;
    if (section) {
      for (const s of p.steps) {
        const li = section.querySelector('li.step[data-step="' + s.number + '"]');
        if (!li) continue;
        li.className = 'step st-' + s.state;
        const icon = li.querySelector('.icon');
        if (icon) icon.textContent = { passed: '✓', failed: '✗', timed_out: '✗', running: '●', stopped: '■', skipped: '–' }[s.state] || '○';
        const st = li.querySelector('.sstate');
        if (st) st.textContent = s.state.replace('_', ' ') + (s.status ? ' (exit ' + s.status + ')' : '');
        const dur = li.querySelector('.dur');
        if (dur) {
          if (s.state === 'running' && s.started_ms) {
            dur.dataset.started = s.started_ms;
          } else {
            delete dur.dataset.started;
            dur.textContent = s.duration_ms !== null && s.duration_ms !== undefined ? duration(s.duration_ms) : '';
          }
        }
        if (s.line && !li.querySelector('a.steplink')) {
          const a = document.createElement('a');
          a.className = 'steplink';
          a.href = '#' + viewer.prefix + s.line;
          a.textContent = 'log';
          li.appendChild(a);
        }
      }
    }
    if (p.ended_ms) {
      document.querySelectorAll('[data-started]').forEach((e) => delete e.dataset.started);
      const b = section ? section.querySelector('summary .badge') : null;
      if (b) {
        b.className = 'badge s-' + p.state;
        b.textContent = p.state;
        b.dataset.state = p.state;
      }
    }
  }

  // ---- anchors: #L123 (current attempt) or #A2-L123 -------------------------------------------
  const viewers = [];
  function viewerFor(id) {
    return viewers.find((v) => id.startsWith(v.prefix) && /^\d+$/.test(id.slice(v.prefix.length)));
  }
  function onHash() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (!id) return false;
    const v = viewerFor(id);
    if (!v) return false;
    v.reveal(Number(id.slice(v.prefix.length)));
    return true;
  }

  // ---- the job list: states refreshed in place ---------------------------------------------
  function listRefresh(table) {
    const q = table.dataset.query;
    const first = table.dataset.first === '1';
    setInterval(async () => {
      const rows = table.querySelectorAll('tbody tr[data-id]');
      if (rows.length === 0 && !first) return;
      const before = new URLSearchParams(location.search).get('before');
      const url = '/api/v1/jobs?' + (q ? q + '&' : '') + (before ? 'before=' + before + '&' : '') +
        'limit=' + Math.max(rows.length, 50);
      let d;
      try { d = await getJSON(url); } catch (e) { return; }
      const known = new Set();
      rows.forEach((r) => known.add(r.dataset.id));
      let newer = 0;
      for (const j of d.jobs) {
        const row = table.querySelector('tbody tr[data-id="' + CSS.escape(j.id) + '"]');
        if (!row) { if (first && !known.has(j.id)) newer++; continue; }
        const b = row.querySelector('.badge');
        if (b && b.dataset.state !== j.state) {
          b.className = 'badge s-' + j.state;
          b.textContent = j.state;
          b.dataset.state = j.state;
        }
        const dur = row.querySelector('td.dur');
        if (dur && j.ended_ms) { delete dur.dataset.started; dur.textContent = duration(j.duration_ms); }
      }
      let note = document.querySelector('.notice');
      if (newer > 0) {
        if (!note) {
          note = document.createElement('p');
          note.className = 'notice';
          note.addEventListener('click', () => location.reload());
          table.parentNode.insertBefore(note, table);
        }
        note.textContent = newer + ' new job' + (newer === 1 ? '' : 's') + ': show';
      }
    }, 5000);
  }

  // ---- start -----------------------------------------------------------------------------------
  function start() {
    showTimes(document);
    setInterval(tick, 1000);
    tick();
    document.querySelectorAll('div.log[data-job]').forEach((el) => viewers.push(new Viewer(el)));
    document.querySelectorAll('details.attempt').forEach((d) => {
      d.addEventListener('toggle', () => {
        const v = viewers.find((x) => x.section === d);
        if (d.open && v && v.lines.children.length === 0 && v.total > 0) v.earlier();
      });
    });
    window.addEventListener('hashchange', onHash);
    const table = document.querySelector('table.jobs');
    if (table) listRefresh(table);
    if (!onHash()) {
      const failing = document.querySelector('details.failing');
      if (failing) failing.scrollIntoView({ block: 'center' });
      else viewers.forEach((v) => { if (v.live || v.section && v.section.open) v.el.scrollTop = v.el.scrollHeight; });
    }
    window.sdciReady = true;
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
