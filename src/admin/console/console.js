// The console's script: signs in when the gateway asks for a key, follows the
// live feed (Server-Sent Events on /console/events, one snapshot a second),
// draws it (text only, never HTML from the feed; sparklines as hand-built SVG),
// and sends publish and disconnect requests to the admin API with the session's
// CSRF token. No framework, no build step.
'use strict';

(() => {
  /** Points kept per sparkline: 5 minutes at one snapshot a second. */
  const HISTORY = 300;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    csrf: null,
    feed: null,
    last: null,
    history: { connections: [], publish: [], delivery: [] },
    /** Last publish result per channel, from this page: { node, subscribers }. */
    reached: new Map(),
    inspected: null,
    /** The inspected channel's subscribers per node (GET /api/channel?cluster=1). */
    subscribers: new Map(),
    /** Each instance's previous heartbeat figures, for its rates: node -> health with at_ms. */
    heartbeats: new Map(),
  };

  const $ = (id) => document.getElementById(id);
  const figures = (name) => document.querySelectorAll(`[data-figure="${name}"]`);

  const intFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const decFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
  const lagFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });

  /** Sets a figure's text and keeps the raw value in data-value, for tests and copy. */
  function setFigure(el, value, format = intFormat) {
    const text = value === null || value === undefined ? '–' : typeof value === 'number' ? format.format(value) : String(value);
    if (el.textContent !== text) el.textContent = text;
    el.dataset.value = value === null || value === undefined ? '' : String(value);
  }
  function figure(name, value, format) {
    for (const el of figures(name)) setFigure(el, value, format);
  }

  /** A table cell showing `display` (numbers formatted), with a unit; a named one keeps its raw value. */
  function cell(display, { num = false, unit = '', name = '', value } = {}) {
    const td = document.createElement('td');
    if (num) td.className = 'num';
    const span = document.createElement('span');
    span.textContent = typeof display === 'number' ? intFormat.format(display) : String(display);
    if (name) {
      const raw = value === undefined ? display : value;
      span.dataset.figure = name;
      span.dataset.value = raw === null ? '' : String(raw);
    }
    td.append(span);
    if (unit) {
      const u = document.createElement('span');
      u.className = 'unit';
      u.textContent = ` ${unit}`;
      td.append(u);
    }
    return td;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function sparkline(svg, points) {
    const max = Math.max(1, ...points);
    const step = 120 / (HISTORY - 1);
    const offset = HISTORY - points.length;
    const coords = points.map((v, i) => `${((offset + i) * step).toFixed(1)},${(29 - (v / max) * 27).toFixed(1)}`).join(' ');
    let base = svg.querySelector('line');
    if (!base) {
      base = document.createElementNS(SVG_NS, 'line');
      base.setAttribute('x1', '0');
      base.setAttribute('x2', '120');
      base.setAttribute('y1', '29');
      base.setAttribute('y2', '29');
      svg.append(base);
    }
    let line = svg.querySelector('polyline');
    if (!line) {
      line = document.createElementNS(SVG_NS, 'polyline');
      svg.append(line);
    }
    line.setAttribute('points', coords);
    const title = svg.querySelector('title') ?? svg.appendChild(document.createElementNS(SVG_NS, 'title'));
    title.textContent = `max ${intFormat.format(max)} over the last ${Math.round(points.length / 60)} min`;
  }

  function remember(series, value) {
    const list = state.history[series];
    list.push(value ?? 0);
    if (list.length > HISTORY) list.shift();
  }

  /** "1 connection", "2 connections". */
  function count(n, noun) {
    return `${intFormat.format(n)} ${noun}${n === 1 ? '' : 's'}`;
  }

  function sum(values) {
    return Object.values(values).reduce((a, b) => a + (b ?? 0), 0);
  }

  function render(s) {
    state.last = s;
    const cluster = s.cluster;
    const stats = s.stats;
    $('node').textContent = `node ${stats.node}`;
    $('local-node').textContent = stats.node;
    $('updated').textContent = `updated ${new Date(s.at_ms).toLocaleTimeString()}`;
    setFeed(cluster.fresh ? 'live' : 'stale', cluster.fresh ? 'live' : 'live, cluster figures stale (broker unreachable)');

    figure('cluster-total', cluster.total_connections);
    figure('cluster-instances', cluster.instances.length);
    $('cluster-fresh').textContent = cluster.overdue.length ? `${cluster.overdue.length} overdue (likely dead)` : '';
    // Null on the first snapshot: a rate needs two readings.
    const bySource = s.rates.published_per_s;
    const published = Object.values(bySource).some((v) => v !== null) ? sum(bySource) : null;
    figure('publish-rate', published, decFormat);
    for (const source of ['api', 'client', 'broker']) figure(`publish-rate-${source}`, bySource[source], decFormat);
    figure('delivery-rate', s.rates.delivered_per_s, decFormat);
    remember('connections', cluster.total_connections);
    remember('publish', published);
    remember('delivery', s.rates.delivered_per_s);
    sparkline($('spark-connections'), state.history.connections);
    sparkline($('spark-publish'), state.history.publish);
    sparkline($('spark-delivery'), state.history.delivery);

    const rows = [];
    for (const [list, label] of [[cluster.instances, 'live'], [cluster.overdue, 'overdue']]) {
      for (const inst of list) {
        const tr = document.createElement('tr');
        tr.dataset.node = inst.node;
        const name = cell(inst.node === stats.node ? `${inst.node} (this one)` : inst.node);
        tr.append(name, cell(inst.ws), cell(inst.connections, { num: true, unit: 'conn', name: 'connections' }));
        tr.append(...healthCells(inst));
        const age = Math.max(0, s.at_ms - inst.at_ms);
        tr.append(cell(age, { num: true, unit: 'ms', name: 'heartbeat-age' }));
        const st = cell(label);
        st.className = label === 'live' ? 'good' : 'bad';
        tr.append(st);
        rows.push(tr);
      }
    }
    replaceRows($('instances'), rows);

    figure('local-connections', stats.connections);
    figure('channels', stats.channels);
    figure('subscriptions', s.subscriptions);
    figure('fd-open', s.fd.open);
    figure('fd-limit', s.fd.limit);
    figure('fd-headroom', stats.fd_headroom);
    figure('fd-reserve', s.fd.reserve);
    const meter = $('fd-meter');
    meter.value = s.fd.limit ? s.fd.open / s.fd.limit : 0;
    meter.title = `${intFormat.format(s.fd.open)} of ${intFormat.format(s.fd.limit)} descriptors in use`;
    figure('ready', stats.ready ? (s.draining ? 'draining' : 'ready') : s.draining ? 'draining' : 'not ready');
    for (const el of figures('ready')) el.className = `value ${stats.ready ? 'good' : 'bad'}`;
    figure('memory', s.memory_bytes / 1048576, decFormat);

    replaceRows(
      $('shards'),
      stats.shards.map((connections, i) => {
        const tr = document.createElement('tr');
        tr.dataset.shard = String(i);
        const lag = s.shard_lag_ms[i];
        tr.append(
          cell(`#${i}`),
          cell(connections, { num: true, unit: 'conn', name: 'connections' }),
          lag === null || lag === undefined
            ? cell('–', { num: true, unit: 'ms', name: 'lag' })
            : cell(lagFormat.format(lag), { num: true, unit: 'ms', name: 'lag', value: lag }),
        );
        return tr;
      }),
    );

    replaceRows(
      $('drops'),
      Object.entries(s.dropped).map(([reason, d]) => {
        const tr = document.createElement('tr');
        tr.dataset.reason = reason;
        tr.append(
          cell(reason.replaceAll('_', ' ')),
          cell(d.total, { num: true, unit: 'msg', name: 'total' }),
          cell(d.per_s === null ? '–' : decFormat.format(d.per_s), { num: true, unit: 'msg/s', value: d.per_s }),
        );
        if (d.total > 0) tr.className = 'warn';
        return tr;
      }),
    );

    figure('broker-kind', s.broker.kind);
    figure('broker-up', s.broker.up ? 'connected' : 'down');
    for (const el of figures('broker-up')) el.className = s.broker.up ? 'good' : 'bad';
    figure('broker-reconnects', s.broker.reconnects);
    figure('broker-subscriptions', s.broker.subscriptions);
    figure('broker-received', s.broker.received_per_s, decFormat);

    if (state.inspected) renderInspector();
  }

  /** An instance's own figures from its heartbeat; rates from its previous one. */
  function healthCells(inst) {
    const h = inst.health || {};
    const before = state.heartbeats.get(inst.node);
    const seconds = before ? (inst.at_ms - before.at_ms) / 1000 : 0;
    const rate = (key) => (before && seconds > 0 ? Math.max(0, (h[key] - before[key]) / seconds) : null);
    if (!before || before.at_ms !== inst.at_ms) {
      if (before && seconds > 0) state.heartbeats.set(`${inst.node}:rates`, { publish: rate('published'), delivery: rate('delivered') });
      state.heartbeats.set(inst.node, { ...h, at_ms: inst.at_ms });
    }
    const rates = state.heartbeats.get(`${inst.node}:rates`) || { publish: null, delivery: null };
    const shards = cell((h.shards || []).join(' / ') || '–', { num: true, unit: 'conn', name: 'shard-connections', value: (h.shards || []).join(',') });
    const redis = cell(h.broker_up ? 'up' : 'down');
    redis.className = h.broker_up ? 'good' : 'bad';
    const ready = cell(h.ready ? 'ready' : 'not ready');
    ready.className = h.ready ? 'good' : 'bad';
    return [
      shards,
      cell(h.fd_headroom ?? 0, { num: true, unit: `fd of ${intFormat.format(h.fd_limit ?? 0)}`, name: 'instance-fd-headroom' }),
      cell(decFormat.format(h.lag_ms ?? 0), { num: true, unit: 'ms', name: 'instance-lag', value: h.lag_ms }),
      cell(rates.publish === null ? '–' : decFormat.format(rates.publish), { num: true, unit: 'msg/s', name: 'instance-publish-rate', value: rates.publish }),
      cell(rates.delivery === null ? '–' : decFormat.format(rates.delivery), { num: true, unit: 'msg/s', name: 'instance-delivery-rate', value: rates.delivery }),
      cell(h.dropped ?? 0, { num: true, unit: 'msgs', name: 'instance-dropped' }),
      redis,
      ready,
    ];
  }

  function renderInspector() {
    const s = state.last;
    const channel = state.inspected;
    $('inspect-name').textContent = channel;
    const instances = s ? s.cluster.instances : [];
    replaceRows(
      $('inspect-rows'),
      instances.map((inst) => {
        const tr = document.createElement('tr');
        tr.dataset.node = inst.node;
        const subs = state.subscribers.get(inst.node);
        tr.append(
          cell(inst.node),
          cell(inst.connections, { num: true, unit: 'conn' }),
          typeof subs === 'number'
            ? cell(subs, { num: true, unit: 'subs', name: 'subscribers' })
            : cell(subs === undefined ? 'asking…' : subs, { num: true }),
        );
        return tr;
      }),
    );
    $('inspect-result').hidden = false;
  }

  /** Asks every instance for the channel's subscribers, and this one for its recent history. */
  async function inspect(channel) {
    state.subscribers = new Map();
    renderInspector();
    const who = await getJson(`/api/channel?name=${encodeURIComponent(channel)}&cluster=1`);
    const keeps = who.status === 200 && who.body && who.body.history;
    const history = keeps ? await getJson(`/api/history?channel=${encodeURIComponent(channel)}&limit=5`) : null;
    if (state.inspected !== channel) return;
    if (who.status === 200 && who.body) {
      for (const inst of who.body.instances || []) {
        state.subscribers.set(inst.node, typeof inst.subscribers === 'number' ? inst.subscribers : `no answer: ${inst.error}`);
      }
      $('inspect-total').textContent = `${count(who.body.total, 'subscriber')} in the cluster.`;
    } else {
      $('inspect-total').textContent = `Subscribers unknown: ${errorText(who)}`;
    }
    const list = $('inspect-history');
    list.replaceChildren();
    if (history === null) {
      $('inspect-history-note').textContent = 'This channel keeps no history.';
    } else if (history.status === 200 && history.body) {
      const pubs = history.body.publications || [];
      $('inspect-history-note').textContent =
        `Epoch ${history.body.epoch}, latest offset ${intFormat.format(history.body.offset)}; the last ${pubs.length} below.`;
      for (const p of pubs) {
        const li = document.createElement('li');
        li.value = p.offset;
        li.dataset.offset = String(p.offset);
        li.textContent = JSON.stringify(p.data);
        list.append(li);
      }
    } else {
      $('inspect-history-note').textContent = `History unknown: ${errorText(history)}`;
    }
    renderInspector();
  }

  /** GETs JSON from the admin port with the session cookie; resolves with { status, body }. */
  async function getJson(path) {
    return answer(await fetch(path, { credentials: 'same-origin' }));
  }

  /** A response as { status, body }, body null when it is not JSON. */
  async function answer(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return { status: response.status, body };
  }

  function setFeed(stateName, text) {
    const badge = $('feed');
    badge.dataset.state = stateName;
    badge.textContent = text;
  }

  /** POSTs JSON to the admin port with the session's CSRF token; resolves with { status, body }. */
  async function post(path, payload) {
    const headers = { 'content-type': 'application/json' };
    if (state.csrf) headers['x-csrf-token'] = state.csrf;
    return answer(
      await fetch(path, {
        method: 'POST',
        headers,
        body: JSON.stringify(payload),
        credentials: 'same-origin',
      }),
    );
  }

  function errorText(result) {
    return result.body && result.body.error ? result.body.error.message : `HTTP ${result.status}`;
  }

  function startFeed() {
    if (state.feed) state.feed.close();
    const feed = new EventSource('/console/events');
    state.feed = feed;
    feed.onmessage = (event) => {
      try {
        render(JSON.parse(event.data));
      } catch (error) {
        setFeed('down', `bad snapshot: ${error}`);
      }
    };
    feed.onerror = () => {
      setFeed('down', 'feed lost, reconnecting…');
      if (feed.readyState === EventSource.CLOSED) {
        // Refused (session over?): ask again rather than retry blindly.
        setTimeout(boot, 2000);
      }
    };
  }

  async function boot() {
    let session;
    try {
      const response = await fetch('/console/session', { credentials: 'same-origin' });
      session = await response.json();
    } catch (error) {
      setFeed('down', 'admin port unreachable, retrying…');
      setTimeout(boot, 2000);
      return;
    }
    state.csrf = session.csrf ?? null;
    $('logout').hidden = !session.auth_required || !session.authenticated;
    if (!session.authenticated) {
      if (state.feed) state.feed.close();
      state.feed = null;
      $('console').hidden = true;
      $('login').hidden = false;
      setFeed('down', 'signed out');
      $('login-key').focus();
      return;
    }
    $('login').hidden = true;
    $('console').hidden = false;
    startFeed();
  }

  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = $('login-key').value;
    $('login-error').textContent = '';
    const result = await post('/console/login', { key });
    $('login-key').value = '';
    if (result.status === 200) {
      await boot();
    } else if (result.status === 429) {
      $('login-error').textContent = 'Too many wrong keys from this address; wait a minute.';
    } else {
      $('login-error').textContent = result.status === 401 ? 'Wrong API key.' : errorText(result);
    }
  });

  $('logout').addEventListener('click', async () => {
    await post('/console/logout', {});
    state.csrf = null;
    await boot();
  });

  $('publish-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = $('publish-result');
    const channel = $('publish-channel').value.trim();
    let data;
    try {
      data = JSON.parse($('publish-data').value);
    } catch (error) {
      out.className = 'error';
      out.textContent = `Data is not JSON: ${error.message}`;
      return;
    }
    const result = await post('/api/publish', { channel, data });
    if (result.status === 200 && result.body && result.body.ok) {
      const node = state.last ? state.last.stats.node : '';
      state.reached.set(channel, { node, subscribers: result.body.subscribers });
      out.className = 'good';
      out.textContent = `Published to ${channel}: reached ${count(result.body.subscribers, 'subscriber')} on this instance; other instances got it through the broker.`;
      out.dataset.subscribers = String(result.body.subscribers);
      if (state.inspected === channel) void inspect(channel);
    } else {
      out.className = 'error';
      out.textContent = `Not published: ${errorText(result)}`;
    }
  });

  $('disconnect-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = $('disconnect-result');
    const user = $('disconnect-user').value.trim();
    const result = await post('/api/disconnect', { user });
    if (result.status === 200 && result.body && result.body.ok) {
      out.className = 'good';
      out.textContent = `Disconnected ${user}: ${count(result.body.disconnected, 'connection')} closed on this instance; other instances were told through the broker.`;
      out.dataset.disconnected = String(result.body.disconnected);
    } else {
      out.className = 'error';
      out.textContent = `Not disconnected: ${errorText(result)}`;
    }
  });

  $('inspect-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.inspected = $('inspect-channel').value.trim();
    $('publish-channel').value = state.inspected;
    void inspect(state.inspected);
  });

  void boot();
})();
