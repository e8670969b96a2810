// keel's dashboard: one document from /api/v1/dashboard/events (server-sent
// events), rendered as it arrives; no framework, no build step, no CDN.
'use strict';

const $ = (id) => document.getElementById(id);
let doc = null;            // the latest document
let receivedAt = 0;        // when it arrived (local clock)

function esc(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function money(minor) {
  if (minor === null || minor === undefined) return '';
  const n = Number(minor) / 100;
  return n.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function ago(ms) {
  if (!ms) return 'never';
  return `${duration(Date.now() - ms)} ago`;
}

function sparkline(svg, values) {
  const w = 300, h = 60;
  if (!values.length) { svg.innerHTML = ''; return; }
  const max = Math.max(...values, 1e-9);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 4 - (v / max) * (h - 8)).toFixed(1)}`);
  svg.innerHTML = `<polyline fill="none" stroke="#2f6fdb" stroke-width="1.5" points="${pts.join(' ')}"/>`;
  svg.dataset.points = String(values.length);
}

function renderCharts(series) {
  sparkline($('chart-events'), series.events_per_s);
  sparkline($('chart-queue'), series.queue_length);
  sparkline($('chart-ttm'), series.time_to_merge_p50_min);
  const last = (a) => (a.length ? a[a.length - 1] : 0);
  $('value-events').textContent = last(series.events_per_s).toFixed(0);
  $('value-queue').textContent = last(series.queue_length);
  $('value-ttm').textContent = last(series.time_to_merge_p50_min).toFixed(1);
}

function buildCell(item, queue, drift) {
  const b = item.build;
  if (!b) return item.last_result ? `<span class="muted">${esc(item.last_result.status)}</span>` : '';
  const elapsed = b.elapsed_ms + drift;
  const typical = queue.typical_build_ms || 0;
  const pct = typical > 0 ? Math.min(100, (100 * elapsed) / typical) : 0;
  const eta = typical > 0 ? (elapsed < typical ? `ETA ${duration(typical - elapsed)}` : 'overdue') : '';
  return `<span class="progress" title="${esc(b.build_id)}"><span style="width:${pct.toFixed(0)}%"></span></span>
    <span class="muted">${duration(elapsed)} ${eta}</span>`;
}

function renderQueues(queues, drift) {
  if (!queues.length) { $('queues').innerHTML = '<p class="muted">No queue yet.</p>'; return; }
  $('queues').innerHTML = queues.map((q) => {
    const f = q.figures;
    const items = q.items.map((it) => `
      <tr data-testid="queue-item" data-number="${it.number}">
        <td class="num">${it.position + 1}</td>
        <td>#${it.number} ${esc(it.title)}</td>
        <td><span class="state ${esc(it.state)}">${esc(it.state)}</span></td>
        <td data-testid="build">${buildCell(it, q, drift)}</td>
      </tr>`).join('');
    const history = q.history.slice(0, 10).map((h) => `
      <li data-testid="outcome" class="${h.outcome}">#${h.number} ${h.outcome}
        ${h.outcome === 'merged' ? `<code>${esc(h.commit_sha.slice(0, 10))}</code>` : esc(h.reason)}
        <span class="muted">${ago(h.at_ms)}</span></li>`).join('');
    return `<div class="queue" data-testid="queue" data-repository="${esc(q.repository)}">
      <h3>${esc(q.repository)} → ${esc(q.branch)}
        <span class="muted">${q.paused ? `paused: ${esc(q.pause_reason)} · ` : ''}${q.items.length} queued ·
        ${q.builds_in_flight} building · ${q.merged_total} merged · ${q.ejected_total} ejected ·
        ${f.merges_per_hour.toFixed(1)} merges/h · p50 ${duration(f.time_to_merge_p50_ms)} ·
        p95 ${duration(f.time_to_merge_p95_ms)} · ${f.wasted_build_minutes.toFixed(1)} wasted build min</span></h3>
      <div class="columns">
        <table><thead><tr><th class="num">pos</th><th>pull request</th><th>state</th><th>build</th></tr></thead>
          <tbody>${items || '<tr><td colspan="4" class="muted">empty</td></tr>'}</tbody></table>
        <ul class="events">${history || '<li class="muted">no merges yet</li>'}</ul>
      </div></div>`;
  }).join('');
}

function renderLedger(ledger) {
  const rows = [];
  for (const c of ledger.clients) {
    for (const p of c.positions) {
      const open = c.open_breaches.filter((b) => b.currency === p.currency)
        .map((b) => `${esc(b.horizon)} ${esc(b.value_date)}`).join(', ');
      rows.push(`<tr data-testid="client" data-client="${esc(c.client_id)}">
        <td>${esc(c.client_id)}</td><td>${esc(p.currency)}</td>
        <td class="num">${money(p.balance_today_minor)}</td>
        <td class="num">${p.limit ? money(p.limit.floor_today_minor) : ''}</td>
        <td class="num ${p.limit && p.limit.headroom_today_minor < 0 ? 'breach' : ''}">${p.limit ? money(p.limit.headroom_today_minor) : ''}</td>
        <td class="${open ? 'breach' : ''}">${open}</td>
        <td class="num">${c.sagas_open}</td></tr>`);
    }
  }
  $('clients').innerHTML = rows.join('') || '<tr><td colspan="7" class="muted">no breaches yet</td></tr>';
  $('breaches').innerHTML = ledger.breaches.map((b) => b.kind === 'breach'
    ? `<li data-testid="breach" class="breach">${esc(b.client_id)} ${esc(b.currency)} ${esc(b.value_date)}:
         ${money(b.balance_before_minor)} → ${money(b.balance_after_minor)} below ${money(b.limit_minor)}
         by <code>${esc(b.causing_transaction_id)}</code></li>`
    : `<li data-testid="breach" class="resolved">${esc(b.client_id)} ${esc(b.currency)} ${esc(b.value_date)} back within limit</li>`).join('')
    || '<li class="muted">none</li>';
  $('sagas').innerHTML = ledger.sagas.map((s) => {
    if (s.kind === 'saga_started') return `<li data-testid="saga">reverting <code>${esc(s.transaction_id)}</code> of ${esc(s.client_id)} (${money(s.amount_minor)} ${esc(s.currency)})</li>`;
    if (s.kind === 'saga_completed') return `<li data-testid="saga" class="resolved">reverted <code>${esc(s.transaction_id)}</code></li>`;
    return `<li data-testid="saga" class="stuck">stuck at ${esc(s.step)}: <code>${esc(s.transaction_id)}</code> ${esc(s.reason)}</li>`;
  }).join('') || '<li class="muted">none</li>';
}

function renderRuntime(rt) {
  const health = $('health');
  health.textContent = rt.ready ? 'ready' : 'restoring';
  health.className = `pill ${rt.ready ? 'ok' : 'bad'}`;
  $('stats').textContent = `${rt.tasks.length} tasks · lag ${rt.lag} · ${rt.events_per_s.toFixed(0)} events/s · ${rt.dead_letters} dead letters`;
  $('tasks').innerHTML = rt.tasks.map((t) => `<tr data-testid="task">
    <td>${esc(t.task)}</td><td>${t.restored ? 'running' : 'restoring'}</td>
    <td class="num">${t.records}</td><td class="num">${t.lag}</td><td class="num">${t.dead_letters}</td>
    <td class="num">${t.restarts}</td><td>${ago(t.last_snapshot_ms)}</td></tr>`).join('');
}

function render() {
  if (!doc) return;
  const drift = Math.max(0, Date.now() - receivedAt);
  renderQueues(doc.queues, drift);
  $('updated').textContent = `updated ${duration(drift)} ago`;
}

function receive(text) {
  doc = JSON.parse(text);
  receivedAt = Date.now();
  document.body.dataset.version = String((Number(document.body.dataset.version) || 0) + 1);
  renderRuntime(doc.runtime);
  renderLedger(doc.ledger);
  renderCharts(doc.series);
  render();
}

function connect() {
  const token = new URLSearchParams(location.search).get('token');
  const url = '/api/v1/dashboard/events' + (token ? `?access_token=${encodeURIComponent(token)}` : '');
  const source = new EventSource(url);
  source.onmessage = (e) => receive(e.data);
  source.onerror = () => {
    $('health').textContent = 'reconnecting…';
    $('health').className = 'pill bad';
  };
}

connect();
setInterval(render, 1000);  // build clocks and ETAs move between documents
