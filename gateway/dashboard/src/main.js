// The operator dashboard: connect to the group's broker over MQTT/WebSockets, verify every message,
// show the group live, draw trend charts from the coordinator's signed rollup and a live ring buffer
// (also kept in localStorage).
//
// Settings come from the URL fragment (never sent to any server) and are then removed from the address
// bar: #site=S&group=G&user=U&pass=P&broker=ws://host:port/mqtt&key=HEX (all optional; the broker
// defaults to the page's own host and port, which is right when Mosquitto serves this page);
// verifier=js forces the bundled JavaScript Ed25519 verifier even where WebCrypto has Ed25519.
//
// Messages are opened in batches (EnvelopeOpener in wire.js): signatures by WebCrypto's Ed25519 where
// the browser has it (a secure context: http://localhost or 127.0.0.1, https), else by the JavaScript
// verifier in short slices; only then does either model see them. The page says which verifier it uses.
import mqtt from 'mqtt'
import uPlot from 'uplot'
import { GroupModel } from './model.js'
import { RegionModel, REGION_FILTERS, renderRegion, bindRegion } from './region.js'
import { hex, openEnvelope, EnvelopeOpener, webCryptoEd25519 } from './wire.js'
import { columnsOf, mergeTrends, regionRows, rollupRows } from './trends.js'

const TREND_POINTS = 720 // 1 h at one sample every 5 s
const TREND_EVERY_MS = 5000
const RENDER_EVERY_MS = 500
const MAX_BACKLOG = 50000 // messages received and not yet opened; beyond it the oldest are dropped (counted)
const BATCH = 512
const UNITS = { compute_cpu: 'cores', compute_gpu: 'GPUs', compute_tpu: 'TPUs', storage_persistent: 'GB', storage_memory: 'GB', storage_cache: 'GB', bandwidth_ingress: 'Mbit/s', bandwidth_egress: 'Mbit/s', specialized_quantum: 'qubits', specialized_edge: 'accelerators' }

const $ = (id) => document.getElementById(id)
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))
const fmt = (x, d = 1) => (x === null || x === undefined ? '—' : Number(x).toFixed(d))
const pct = (x) => (x === null || x === undefined ? '—' : (100 * x).toFixed(0) + ' %')
const ago = (ms) => (ms === null ? '—' : ms < 1500 ? 'now' : ms < 90000 ? Math.round(ms / 1000) + ' s' : Math.round(ms / 60000) + ' min')

function readSettings () {
  const fromHash = new URLSearchParams(location.hash.slice(1))
  const saved = JSON.parse(sessionStorage.getItem('prsm-dash-settings') || '{}')
  const s = { ...saved }
  for (const k of ['site', 'group', 'user', 'pass', 'broker', 'key', 'verifier']) if (fromHash.has(k)) s[k] = fromHash.get(k)
  if (location.hash) history.replaceState(null, '', location.pathname + location.search)
  sessionStorage.setItem('prsm-dash-settings', JSON.stringify(s))
  if (!s.broker) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
    s.broker = location.host ? `${scheme}://${location.host}/mqtt` : 'ws://127.0.0.1:9001/mqtt'
  }
  return s
}

function hexToBytes (h) {
  if (!/^[0-9a-f]{64}$/i.test(h || '')) return null
  return Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16))
}

class Trends {
  constructor (key) {
    this.key = key
    try {
      const saved = JSON.parse(localStorage.getItem(key) || '[]')
      this.rows = Array.isArray(saved) ? saved.filter((r) => Array.isArray(r) && r.length === 4).slice(-TREND_POINTS) : []
    } catch (err) {
      this.rows = []
    }
  }

  add (t, util, online, trusted) {
    this.rows.push([t, util, online, trusted])
    if (this.rows.length > TREND_POINTS) this.rows.splice(0, this.rows.length - TREND_POINTS)
    try {
      localStorage.setItem(this.key, JSON.stringify(this.rows))
    } catch (err) { /* storage full: the chart keeps what it has in memory */ }
  }

  columns () {
    return [0, 1, 2, 3].map((i) => this.rows.map((r) => r[i]))
  }
}

function chart (el, title, series, y = {}) {
  return new uPlot({
    title,
    width: Math.max(280, el.clientWidth - 10),
    height: 160,
    scales: { x: { time: true }, y },
    series: [{}, ...series],
    axes: [{ stroke: '#8a94a6' }, { stroke: '#8a94a6' }]
  }, [[], ...series.map(() => [])], el)
}

async function main () {
  const s = readSettings()
  $('broker').textContent = s.broker
  if (!s.site || !s.group) {
    $('conn').textContent = 'no group: open the URL that `prsm-edge viewer add` printed (it names site and group)'
    $('conn').className = 'badge bad'
    return
  }
  $('groupname').textContent = `${s.site}/${s.group}`
  document.title = `prsm ${s.site}/${s.group}`
  const pinKey = `prsm-dash:${s.site}/${s.group}:coordinator-key`
  const pinned = hexToBytes(s.key) || hexToBytes(localStorage.getItem(pinKey))
  const model = new GroupModel({ site: s.site, group: s.group, pinnedKey: pinned })
  const trends = new Trends(`prsm-dash:${s.site}/${s.group}:trends`)
  window.prsmModel = model // for the browser tests and for curious operators
  const region = new RegionModel({ site: s.site, region: s.group, pinnedKey: pinned }) // shown if tier >= 2
  window.prsmRegion = region
  bindRegion(region, $('region'))
  const webCrypto = s.verifier !== 'js' && await webCryptoEd25519()
  const opener = new EnvelopeOpener({ webCrypto, nested: (b) => (b.t === 'uprec' ? b.item : null) })
  $('verifier').textContent = webCrypto
    ? 'signatures: WebCrypto Ed25519 (the browser\'s own)'
    : `signatures: JavaScript Ed25519${opener.threads ? ` in ${opener.threads} workers` : ''} (slower: ${globalThis.isSecureContext ? (s.verifier === 'js' ? 'chosen in the URL' : 'this browser has no WebCrypto Ed25519') : 'not a secure context; open the page as http://localhost or over https for WebCrypto'})`
  $('verifier').className = 'badge ' + (webCrypto ? 'ok' : 'warn')
  const pipe = { kind: opener.kind, threads: opener.threads, backlog: [], dropped: 0, opened: 0, busy: false }
  window.prsmPipeline = pipe // for the benchmarks and the tests

  const utilChart = chart($('chart-util'), 'utilization %', [{ label: 'cpu %', stroke: '#4f9dff', width: 2 }], { range: [0, 100] })
  const nodesChart = chart($('chart-nodes'), 'nodes', [
    { label: 'online', stroke: '#3ecf8e', width: 2 },
    { label: 'verified above self-report', stroke: '#f5a623', width: 2 }
  ], { range: (u, min, max) => [0, Math.max(4, max ?? 0)] })
  const earnedChart = chart($('chart-earned'), 'FTNS credited per interval', [{ label: 'FTNS', stroke: '#c678dd', width: 2 }])
  const drawCharts = () => {
    // The coordinator's signed rollup (history that survives a reload), then this page's live buffer.
    const rows = mergeTrends(rollupRows(model.rollup), trends.rows)
    window.prsmTrendRows = rows // for the browser tests
    const [t, u, o, v, e] = columnsOf(rows)
    utilChart.setData([t, u.map((x) => (x === null ? null : 100 * x))])
    nodesChart.setData([t, o, v])
    earnedChart.setData([t, e])
    // At least the last ten minutes on the time axis, so a fresh buffer does not stretch to years.
    const now = Date.now() / 1000
    for (const c of [utilChart, nodesChart, earnedChart]) c.setScale('x', { min: Math.min(t.length ? t[0] : now, now - 600), max: now })
  }
  drawCharts()

  const client = mqtt.connect(s.broker, {
    clientId: 'prsm-dash-' + hex(crypto.getRandomValues(new Uint8Array(6))),
    username: s.user || undefined,
    password: s.pass || undefined,
    protocolVersion: 4,
    reconnectPeriod: 2000,
    connectTimeout: 8000,
    clean: true
  })
  const setConn = (text, cls) => { $('conn').textContent = text; $('conn').className = 'badge ' + cls }
  client.on('connect', () => {
    setConn('connected' + (s.user ? ' as ' + s.user : ' (anonymous)'), 'ok')
    const base = `prsm/v1/${s.site}/${s.group}/#`
    client.subscribe([base, `prsm/v1/${s.site}/gw/+/state`], { qos: 0 }, (err, granted) => {
      if (err) return setConn('subscribe failed: ' + err.message, 'bad')
      if (granted && granted.some((g) => g.qos === 128)) setConn('this login may not read the group (use a viewer login)', 'bad')
    })
    client.subscribe(REGION_FILTERS, { qos: 0 }) // a region's gateways (a group's viewer may be refused: fine)
  })
  client.on('reconnect', () => setConn('reconnecting…', 'warn'))
  client.on('close', () => setConn('disconnected', 'bad'))
  client.on('error', (err) => setConn('error: ' + err.message, 'bad'))
  // Received messages wait (bounded) to be opened a batch at a time, in the order they came; each is
  // shown only after its signature verified, and a failure is flagged by the models as before.
  const pump = async () => {
    if (pipe.busy) return
    pipe.busy = true
    try {
      while (pipe.backlog.length) {
        const batch = pipe.backlog.splice(0, BATCH)
        const opened = await opener.openAll(batch.map((m) => m[1]))
        for (let i = 0; i < batch.length; i++) {
          const [topic, bytes, retained] = batch[i]
          model.receive(topic, bytes, retained, opened[i])
          region.receive(topic, bytes, retained, opened[i])
        }
        pipe.opened += batch.length
        if (model.pinnedKey) localStorage.setItem(pinKey, hex(model.pinnedKey))
        await new Promise((resolve) => setTimeout(resolve, 0)) // the page draws and takes clicks between batches
      }
    } finally {
      pipe.busy = false
    }
  }
  client.on('message', (topic, payload, packet) => {
    const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload)
    pipe.backlog.push([topic, bytes, !!packet.retain])
    if (pipe.backlog.length > MAX_BACKLOG) {
      pipe.backlog.shift()
      pipe.dropped++
    }
    pump()
  })

  let regionCharts = null
  const drawRegionCharts = () => {
    if (!regionCharts) {
      regionCharts = [
        chart($('region-chart-nodes'), 'nodes', [
          { label: 'online', stroke: '#3ecf8e', width: 2 },
          { label: 'verified above self-report', stroke: '#f5a623', width: 2 }
        ], { range: (u, min, max) => [0, Math.max(4, max ?? 0)] }),
        chart($('region-chart-util'), 'utilization %', [{ label: 'utilization %', stroke: '#4f9dff', width: 2 }], { range: [0, 100] }),
        chart($('region-chart-groups'), 'groups', [
          { label: 'alive', stroke: '#3ecf8e', width: 2 },
          { label: 'dead', stroke: '#ff6b6b', width: 2 }
        ], { range: (u, min, max) => [0, Math.max(4, max ?? 0)] })
      ]
    }
    // Only the region coordinator's signed rollup: a region's page keeps no sampler of its own.
    const rows = regionRows(region.rollup)
    window.prsmRegionTrendRows = rows // for the browser tests
    const [t, u, o, v, alive, dead] = [0, 1, 2, 3, 4, 5].map((i) => rows.map((r) => r[i]))
    const [nodes, util, groups] = regionCharts
    nodes.setData([t, o, v])
    util.setData([t, u.map((x) => (x === null ? null : 100 * x))])
    groups.setData([t, alive, dead])
    const now = Date.now() / 1000
    for (const c of regionCharts) c.setScale('x', { min: Math.min(t.length ? t[0] : now, now - 600), max: now })
  }
  let drawnRollup = null

  let drawn = -1
  setInterval(() => {
    $('verifier').dataset.backlog = pipe.backlog.length
    if (region.active) renderRegion(region, $('region'))
    if (region.active && region.rollup !== drawnRollup) {
      drawnRollup = region.rollup
      drawRegionCharts()
    }
    if (model.version === drawn && !document.hidden) { render(model, true); return }
    drawn = model.version
    render(model, false)
  }, RENDER_EVERY_MS)
  setInterval(() => {
    if (region.active) return // a region's broker: its trends come from the region's rollup, not this sampler
    const o = model.overview()
    if (!model.coord && !o.online) return
    const verified = Object.entries(o.trust).filter(([k]) => k !== 'self_reported').reduce((a, [, n]) => a + n, 0)
    trends.add(Math.floor(Date.now() / 1000), o.utilization, o.online, verified)
    drawCharts()
  }, TREND_EVERY_MS)
  window.addEventListener('resize', () => {
    for (const [c, el] of [[utilChart, 'chart-util'], [nodesChart, 'chart-nodes'], [earnedChart, 'chart-earned']]) c.setSize({ width: Math.max(280, $(el).clientWidth - 10), height: 160 })
    if (regionCharts) regionCharts.forEach((c, i) => c.setSize({ width: Math.max(280, $(['region-chart-nodes', 'region-chart-util', 'region-chart-groups'][i]).clientWidth - 10), height: 160 }))
  })
}

function render (model, agesOnly) {
  const now = Date.now()
  const c = model.coord
  if (!agesOnly) {
    const mismatch = model.coordKeyMismatch
    $('coord').innerHTML = c
      ? `<span class="badge ${c.status === 'online' ? 'ok' : 'bad'}" data-test="coord-status">${esc(c.status)}</span>
         <dl><dt>coordinator</dt><dd class="mono">${esc(c.coordinator)}</dd>
         <dt>epoch</dt><dd data-test="coord-epoch">${esc(c.epoch)}</dd>
         <dt>pinned key</dt><dd class="mono">${hex(model.pinnedKey, 8)}…</dd>
         <dt>ACL</dt><dd>${c.acl ? 'per-node ACLs' : 'none (open broker)'}</dd>
         <dt>room</dt><dd>${esc(c.capacity_left)} more members</dd></dl>`
        + (mismatch ? `<p class="bad">A coordinator with another key (${esc(mismatch.key.slice(0, 16))}…) speaks for this group: not trusted.</p>` : '')
      : '<span class="badge warn">waiting for the coordinator\'s signed state</span>'
    const o = model.overview()
    $('overview').innerHTML = `
      <div class="stat"><b data-test="online-count">${o.online}</b><span>online nodes</span></div>
      <div class="stat"><b>${o.members}</b><span>members</span></div>
      <div class="stat"><b>${pct(o.utilization)}</b><span>CPU utilization</span></div>
      <div class="stat"><b>${model.counts.verified}</b><span>messages verified</span></div>
      <div class="stat ${model.counts.unverified ? 'alarm' : ''}"><b data-test="unverified-count">${model.counts.unverified}</b><span>unverified</span></div>
      <table class="cap"><tr><th>resource</th><th>offered</th></tr>${Object.entries(o.capacity).sort().map(([k, v]) => `<tr><td>${esc(k)}</td><td>${fmt(v, 2)} ${esc(o.units[k] || UNITS[k] || '')}</td></tr>`).join('')}</table>
      <table class="cap"><tr><th>trust level</th><th>nodes</th></tr>${Object.entries(o.trust).sort().map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join('')}</table>`
    const k = model.counts
    $('verification').innerHTML = `
      <div class="row">challenges <b>${k.challenges}</b> · proofs <b>${k.proofs}</b> · openings <b>${k.openings}</b> ·
      votes accepted <b>${k.accepted}</b> · rejected <b class="${k.rejected ? 'bad' : ''}">${k.rejected}</b> · level changes <b>${k.levelChanges}</b>
      ${model.beacon ? ` · beacon round <b>${esc(model.beacon.round)}</b>` : ''}</div>
      <ul class="events">${model.events.slice(0, 14).map((e) => `<li class="${e.cls}">${new Date(e.at).toLocaleTimeString()} ${esc(e.text)}</li>`).join('')}</ul>`
    $('failures').innerHTML = model.failures.length
      ? `<ul class="events" data-test="failures">${model.failures.slice(0, 20).map((f) => `<li class="bad">${new Date(f.at).toLocaleTimeString()} <span class="mono">${esc(f.topic)}</span>: ${esc(f.reason)}</li>`).join('')}</ul>`
      : '<p class="ok">every message so far verified</p>'
    const leases = model.activeLeases(now)
    const market = model.summary && model.summary.market
    const perHour = market && market.hourly_earnings_micro ? Object.entries(market.hourly_earnings_micro) : []
    const ledger = model.ledgerHead
    $('economy').innerHTML = `
      <div class="row">ledger <b>${ledger ? esc(ledger.count) : '—'}</b> entries${ledger && ledger.head ? ` · head <span class="mono">${hex(ledger.head, 6)}…</span>` : ''}
        · active leases <b data-test="leases">${leases.length}</b> · market listings <b>${model.listings.size}</b></div>
      ${perHour.length ? `<table class="cap"><tr><th>device class</th><th>FTNS/h p25</th><th>p50</th><th>p75</th><th>nodes</th></tr>${perHour.map(([cls, q]) => `<tr><td>${esc(cls)}</td><td>${fmt(q.p25 / 1e6, 4)}</td><td>${fmt(q.p50 / 1e6, 4)}</td><td>${fmt(q.p75 / 1e6, 4)}</td><td>${esc(q.nodes)}</td></tr>`).join('')}</table>` : ''}
      ${leases.length ? `<table class="cap"><tr><th>lease</th><th>node</th><th>FTNS/h</th><th>ends</th></tr>${leases.slice(0, 12).map((l) => `<tr><td class="mono">${esc(String(l.lease_id).slice(0, 12))}</td><td class="mono">${esc(l.node)}</td><td>${fmt((l.rate_micro_per_hour || 0) / 1e6, 4)}</td><td>${typeof l.end_ms === 'number' ? ago(l.end_ms - now) : '—'}</td></tr>`).join('')}</table>` : '<p class="dim">no lease running</p>'}`
    $('gateways').innerHTML = model.gateways.size
      ? [...model.gateways.entries()].map(([g, b]) => `<div><b>${esc(g)}</b> ${esc(b.status ?? b.link ?? '')} ${b.buffered !== undefined ? '· buffered ' + esc(b.buffered) : ''} <span class="mono">signed by ${esc(b.signer)}</span></div>`).join('')
      : '<p class="dim">no gateway state published for this site</p>'
  }
  const rows = [...model.nodes.values()].sort((a, b) => (a.id < b.id ? -1 : 1))
  $('roster-count').textContent = `${rows.length}`
  $('roster').innerHTML = rows.map((n) => {
    const online = model.online(n)
    const entry = model.roster.get(n.id)
    const res = n.birth && Array.isArray(n.birth.resources) ? n.birth.resources : []
    const hb = n.hb
    let state = online ? 'online' : 'offline'
    let why = ''
    if (online && hb && !hb.offering) { state = 'held'; why = hb.throttle || 'owner limit' } else if (online && hb && hb.throttle) why = hb.throttle
    const bad = n.badTopics.size > 0
    return `<tr data-node="${esc(n.id)}" data-state="${state}" data-unverified="${bad ? 'yes' : 'no'}" class="${bad ? 'unverified' : ''} ${state}">
      <td class="mono">${bad ? '<span class="flag" title="' + esc([...n.badTopics.values()].join('; ')) + '">⚠ unverified</span> ' : ''}${esc(n.id)}${entry ? '' : ' <span class="dim">(not in roster)</span>'}</td>
      <td>${esc(n.birth ? n.birth.device_class : '—')}</td>
      <td>${res.map((r) => `${esc(r.type.replace('compute_', '').replace('storage_', '').replace('bandwidth_', 'bw '))} ${fmt(r.capacity, 2)}`).join(', ') || '—'}</td>
      <td>${esc(entry ? entry.level : '—')}</td>
      <td><span class="badge ${state === 'online' ? 'ok' : state === 'held' ? 'warn' : 'bad'}">${state}</span> ${esc(why)}</td>
      <td>${pct(hb ? hb.cpu : null)}</td>
      <td>${hb && hb.temp !== null ? fmt(hb.temp) + ' °C' : '—'}</td>
      <td>${ago(n.lastSeenMs === null ? null : now - n.lastSeenMs)}</td>
      <td class="${n.gaps ? 'bad' : ''}">${n.gaps}</td></tr>`
  }).join('')
}

window.prsmWire = { openEnvelope } // the page's own verifier, for benchmarks/dashboard_verify.py
document.addEventListener('DOMContentLoaded', main)
