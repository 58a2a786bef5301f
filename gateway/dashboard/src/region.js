// The region view: when the page is opened against a region's broker (its coordinator says tier 2 or
// more), every group of the region, built only from messages whose signatures verified.
//
// The rules mirror prsm_edge/protocol/regionview.py (what `prsm-edge status` applies):
// - coord/state must be signed by the key it names; that key is pinned (the URL's key=HEX, else the
//   first seen) and another key later is flagged; a tier-1 state means the broker is a group's;
// - the region's summary and each group's standing (unit/{site}/{group}/state: alive or dead and why,
//   the coordinator key the region pinned for the group, the gateway it bound) must be signed by the
//   pinned region key, and wait (bounded) for the region's state;
// - a group's summary must name its group and be signed by the key the region pinned for it; a
//   gateway's link state (prsm/v1/{site}/gw/{gateway}/state) must be signed by the gateway it names and
//   by the one the region bound to the group; they wait (bounded) for the group's standing;
// - a standing from another region epoch, or while the region's coordinator is offline, is unconfirmed;
//   one older than the standing held (region epoch, then sequence number) is a replay, refused;
// - anything else is marked unverified, counted (per group where it names one), never shown as fact.
import { openEnvelope, sameBytes, hex } from './wire.js'

const MAX_UNITS = 5000
const MAX_PENDING = 3 * MAX_UNITS // a region's whole retained state may come before the words it waits for
const MAX_FAILURES = 100
const REDRAW_MS = 2000
const PAGE_ROWS = 50 // rows drawn at once: a region of thousands is paged, never drawn whole

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))
const num = (x, lo, hi) => (typeof x === 'number' && Number.isFinite(x) && x >= lo && x <= hi ? x : null)
const count = (x) => num(x ?? 0, 0, 1e12) ?? 0
const pct = (x) => (x === null ? '—' : (100 * x).toFixed(0) + ' %')
const ago = (ms) => (ms === null ? '—' : ms < 1500 ? 'now' : ms < 90000 ? Math.round(ms / 1000) + ' s' : Math.round(ms / 60000) + ' min')

/** The topics a region's page needs beyond its own tree (gateways publish under their group's site). */
export const REGION_FILTERS = ['prsm/v1/+/gw/+/state']

function parts (topic) {
  const p = topic.split('/')
  if (p.length < 5 || p[0] !== 'prsm' || p[1] !== 'v1') return null
  if (p[3] === 'gw') return p.length === 6 && p[5] === 'state' ? { kind: 'gw', site: p[2], gateway: p[4] } : null
  const t = { site: p[2], group: p[3] }
  if (p.length === 6 && p[4] === 'coord' && p[5] === 'state') return { ...t, kind: 'coord' }
  if (p.length === 6 && p[4] === 'coord' && p[5] === 'rollup') return { ...t, kind: 'rollup' }
  if (p.length === 5 && p[4] === 'summary') return { ...t, kind: 'summary' }
  if (p.length === 8 && p[4] === 'unit' && ['summary', 'state', 'stream'].includes(p[7])) {
    return { ...t, kind: 'unit/' + p[7], key: p[5] + '/' + p[6] }
  }
  return null
}

export class RegionModel {
  constructor ({ site, region, pinnedKey = null, now = () => Date.now() }) {
    this.site = site
    this.region = region
    this.now = now
    this.pinnedKey = pinnedKey
    this.coord = null // the verified CoordState body, tier >= 2
    this.summary = null // the region's own signed summary
    this.rollup = null // the region's signed retained trend rollup (trends.js reads it)
    this.page = 0 // which PAGE_ROWS of the table are drawn
    this.attention = false // draw only the groups that need attention
    this.units = new Map() // 'site/group' -> unit
    this.waitingRegion = new Map() // topic -> [payload, retained]
    this.waitingUnit = new Map() // topic -> [key, payload, retained]
    this.failures = []
    this.counts = { verified: 0, unverified: 0 }
    this.selected = null
    this.version = 0
  }

  /** A region's coordinator has spoken (verified): the page shows the region. */
  get active () { return this.coord !== null }

  unit (key) {
    let u = this.units.get(key)
    if (!u && this.units.size < MAX_UNITS) {
      const [site, group] = key.split('/')
      u = { key, site, group, standing: null, summary: null, summaryMs: null, gateway: null, gatewayMs: null, records: 0, historical: 0, unverified: 0, bad: new Map() }
      this.units.set(key, u)
    }
    return u
  }

  fail (topic, reason, key = null) {
    this.counts.unverified++
    this.failures.unshift({ at: this.now(), topic, reason })
    if (this.failures.length > MAX_FAILURES) this.failures.length = MAX_FAILURES
    const u = key ? this.unit(key) : null
    if (u) {
      u.unverified++
      u.bad.set(topic, reason)
      if (u.bad.size > 16) u.bad.delete(u.bad.keys().next().value)
    }
    this.version++
  }

  wait (map, topic, entry) {
    map.delete(topic)
    map.set(topic, entry)
    if (map.size > MAX_PENDING) map.delete(map.keys().next().value)
  }

  /** Feed one MQTT message (`opened`: already opened and checked by an EnvelopeOpener, else here). */
  receive (topic, payload, retained = false, opened = null) {
    const t = parts(topic)
    if (!t || payload.length === 0) return
    if (t.kind !== 'gw' && (t.site !== this.site || t.group !== this.region)) return
    opened = opened || openEnvelope(payload)
    if (!opened.ok) return this.fail(topic, opened.reason, t.key || null)
    if (t.kind === 'coord') return this.coordState(topic, opened)
    if (t.kind === 'summary' || t.kind === 'unit/state' || t.kind === 'rollup') return this.fromRegion(topic, t, opened, payload, retained)
    if (t.kind === 'unit/summary') return this.unitSummary(topic, t.key, opened, payload, retained)
    if (t.kind === 'unit/stream') return this.stream(topic, t.key, opened)
    if (t.kind === 'gw') return this.gatewayState(topic, t.gateway, opened, payload, retained)
  }

  coordState (topic, opened) {
    const b = opened.body
    if (b.t !== 'cstate' || b.coordinator !== opened.signer || !sameBytes(b.public_key, opened.kid)) {
      return this.fail(topic, 'coordinator state not signed by the key it names')
    }
    if (!(num(b.tier ?? 1, 2, 9))) return // a group's coordinator: the group page's business
    if (this.pinnedKey && !sameBytes(this.pinnedKey, opened.kid)) {
      return this.fail(topic, `region key ${hex(opened.kid, 8)}… is not the pinned key ${hex(this.pinnedKey, 8)}…`)
    }
    this.pinnedKey = opened.kid
    this.coord = b
    this.counts.verified++
    this.version++
    const waiting = [...this.waitingRegion.entries()]
    this.waitingRegion.clear()
    for (const [tp, [pl, rt, op]] of waiting) this.receive(tp, pl, rt, op)
  }

  fromRegion (topic, t, opened, payload, retained) {
    if (!this.coord) return this.wait(this.waitingRegion, topic, [payload, retained, opened])
    const b = opened.body
    const key = t.kind === 'unit/state' ? t.key : null
    if (!sameBytes(opened.kid, this.coord.public_key)) return this.fail(topic, `signed by ${opened.signer}, not by the region's coordinator`, key)
    if (t.kind === 'summary') {
      if (b.t !== 'summary') return this.fail(topic, 'not a summary')
      this.summary = b
    } else if (t.kind === 'rollup') {
      if (b.t !== 'rollup' || b.site !== this.site || b.group !== this.region) return this.fail(topic, "not this region's rollup")
      this.rollup = b
    } else {
      if (b.t !== 'ustate' || `${b.site}/${b.group}` !== key || b.region !== this.region) return this.fail(topic, "not this group's standing", key)
      const u = this.unit(key)
      if (!u) return
      const old = u.standing
      if (old && (b.region_epoch < old.region_epoch || (b.region_epoch === old.region_epoch && (b.seq ?? 0) < (old.seq ?? 0)))) {
        return this.fail(topic, "an older standing of the region's, replayed", key)
      }
      u.standing = b
      u.bad.delete(topic)
      for (const [tp, [k, pl, rt, op]] of [...this.waitingUnit.entries()]) {
        if (k === key) { this.waitingUnit.delete(tp); this.receive(tp, pl, rt, op) }
      }
    }
    this.counts.verified++
    this.version++
  }

  unitSummary (topic, key, opened, payload, retained) {
    const u = this.units.get(key)
    if (!u || !u.standing) return this.wait(this.waitingUnit, topic, [key, payload, retained, opened])
    const b = opened.body
    if (!sameBytes(opened.kid, u.standing.public_key)) return this.fail(topic, `signed by ${opened.signer}, not by the key the region pinned for ${key}`, key)
    if (b.t !== 'summary' || `${b.site}/${b.group}` !== key) return this.fail(topic, "not this group's summary", key)
    u.summary = b
    u.summaryMs = this.now()
    u.bad.delete(topic)
    this.counts.verified++
    this.version++
  }

  bound (u, opened) {
    const k = u.standing && u.standing.gateway_key
    return !(k && k.length) || sameBytes(k, opened.kid)
  }

  gatewayState (topic, gateway, opened, payload, retained) {
    const b = opened.body
    if (b.t !== 'gwstate' || opened.signer !== gateway || b.gateway !== gateway) return this.fail(topic, `gateway state signed by ${opened.signer}, not by ${gateway}`)
    const key = `${b.site}/${b.group}`
    const u = this.units.get(key)
    if (!u || !u.standing) return this.wait(this.waitingUnit, topic, [key, payload, retained, opened]) // perhaps another region's
    if (!this.bound(u, opened)) return this.fail(topic, `${gateway} is not the gateway the region bound to ${key}`, key)
    if (!u.gateway || u.gateway.gateway !== b.gateway || count(b.bdseq) >= count(u.gateway.bdseq)) {
      u.gateway = b
      u.gatewayMs = this.now()
    }
    u.bad.delete(topic)
    this.counts.verified++
    this.version++
  }

  stream (topic, key, opened) {
    const u = this.units.get(key)
    if (!u || !u.standing) return // live records only: nothing to hold on to
    const b = opened.body
    if (b.t !== 'uprec' || b.gateway !== opened.signer || `${b.site}/${b.group}` !== key) return this.fail(topic, 'a stream record must be signed by the gateway it names', key)
    if (!this.bound(u, opened)) return this.fail(topic, `${b.gateway} is not the gateway the region bound`, key)
    const item = opened.item || openEnvelope(b.item)
    if (!item.ok) return this.fail(topic, "the record's item: " + item.reason, key)
    if (!sameBytes(item.kid, u.standing.public_key)) return this.fail(topic, "the record's item is not signed by the group's coordinator", key)
    u.records++
    if (b.historical) u.historical++
    this.counts.verified++
    this.version++
  }

  /** 'alive', 'dead' (the region said so, this epoch) or 'unconfirmed'. */
  status (u) {
    const s = u.standing
    const c = this.coord
    if (!s || !c || c.status !== 'online' || s.region_epoch !== c.epoch) return 'unconfirmed'
    return s.alive ? 'alive' : 'dead'
  }

  /** The gateway link as one word: up, replaying, down or unknown. */
  link (u) {
    const g = u.gateway
    if (!g) return 'unknown'
    if (g.status !== 'online' || g.uplink !== 'up') return 'down'
    return count(g.buffered) > 0 ? 'replaying' : 'up'
  }

  /** The groups shown: those with the region's word or a verified summary, by site and name. */
  groups () {
    return [...this.units.values()].filter((u) => u.standing || u.summary).sort((a, b) => (a.key < b.key ? -1 : 1))
  }
}

const LINK_CLASS = { up: 'ok', replaying: 'warn', down: 'bad', unknown: 'dim' }
const STATUS_CLASS = { alive: 'ok', dead: 'bad', unconfirmed: 'warn' }

function capacityText (cap) {
  return Object.entries(cap || {}).sort().map(([k, v]) => `${esc(k.replace('compute_', '').replace('storage_', '').replace('bandwidth_', 'bw '))} ${num(v, 0, 1e12)?.toFixed(1) ?? '?'}`).join(', ') || '—'
}

function trustText (trust) {
  return Object.entries(trust || {}).sort().map(([k, v]) => `${esc(k)} ${count(v)}`).join(', ') || '—'
}

function detail (model, u, now) {
  const s = u.summary || {}
  const g = u.gateway
  const key = u.standing ? hex(u.standing.public_key) : ''
  const frag = `#site=${encodeURIComponent(u.site)}&group=${encodeURIComponent(u.group)}${key ? '&key=' + key : ''}`
  const market = s.market && s.market.hourly_earnings_micro ? Object.entries(s.market.hourly_earnings_micro) : []
  return `<h3>${esc(u.key)} <span class="badge ${STATUS_CLASS[model.status(u)]}">${model.status(u)}</span> ${u.standing && u.standing.why ? esc(u.standing.why) : ''}</h3>
    <dl><dt>coordinator key (pinned by the region)</dt><dd class="mono">${key || '—'}</dd>
    <dt>epoch · summary</dt><dd>${esc(s.epoch ?? '—')} · ${ago(u.summaryMs === null ? null : now - u.summaryMs)} ago · ${count(s.online)}/${count(s.members)} nodes online, utilization ${pct(num(s.utilization, 0, 1))}</dd>
    <dt>capacity</dt><dd>${capacityText(s.capacity)}</dd><dt>trust</dt><dd>${trustText(s.trust)}</dd>
    <dt>claims</dt><dd>${count(s.claims)} signed claims under root <span class="mono">${s.claims_root ? hex(s.claims_root, 8) + '…' : '—'}</span> (the region can ask the group to open any of them)</dd>
    ${market.length ? `<dt>FTNS/h p50 by class</dt><dd>${market.map(([cls, q]) => `${esc(cls)} ${((num(q && q.p50, 0, 1e15) ?? 0) / 1e6).toFixed(4)}`).join(', ')}</dd>` : ''}
    <dt>gateway</dt><dd>${g ? `<span class="mono">${esc(g.gateway)}</span> ${g.status === 'online' ? 'online, uplink ' + esc(g.uplink ?? 'down') : 'offline (its goodbye or Will)'}, bridge ${esc(g.bridge ?? 'unknown')}, group coordinator ${esc(g.coordinator ?? 'unknown')}; buffered ${count(g.buffered)}, dropped ${count(g.dropped)}, expired ${count(g.expired)}, replayed ${count(g.replayed)} (state ${ago(now - u.gatewayMs)} old)` : 'no signed link state seen'}</dd>
    <dt>stream seen here</dt><dd>${u.records} records, ${u.historical} historical (replayed after an outage)</dd>
    <dt>roster</dt><dd>This region's broker carries the group's signed summary, not its roster. Open the group's own page on its broker (its <code>viewer add</code> URL), or add <span class="mono" data-test="drill-fragment">${esc(frag)}</span> to its dashboard address: the key pins the coordinator this region pinned.</dd></dl>
    ${u.bad.size ? `<ul class="events">${[...u.bad.entries()].map(([tp, why]) => `<li class="bad"><span class="mono">${esc(tp)}</span>: ${esc(why)}</li>`).join('')}</ul>` : ''}`
}

let drawnVersion = -1
let drawnAt = 0

/** Whether a group needs the operator's eye: not alive, its link not up, or something refused. */
function needsAttention (model, u) {
  return model.status(u) !== 'alive' || model.link(u) !== 'up' || u.unverified > 0
}

/** Draw the region into #region (when the model changed, or every few seconds for the ages). Only one
 * page of PAGE_ROWS groups is drawn, so a region of thousands costs what a region of hundreds does. */
export function renderRegion (model, root) {
  const now = Date.now()
  if (model.version === drawnVersion && now - drawnAt < REDRAW_MS) return
  if (model.pressed) return // a button is down on the table: redrawing now would lose the click
  drawnVersion = model.version
  drawnAt = now
  document.body.dataset.view = 'region'
  const groups = model.groups()
  const alive = groups.filter((u) => model.status(u) === 'alive').length
  const s = model.summary
  const c = model.coord
  const overview = `<div class="overview">
    <div class="stat"><b data-test="region-alive">${alive}/${groups.length}</b><span>groups alive</span></div>
    <div class="stat"><b>${s ? count(s.online) : '—'}</b><span>active nodes${s ? ' of ' + count(s.members) : ''}</span></div>
    <div class="stat"><b>${s ? pct(num(s.utilization, 0, 1)) : '—'}</b><span>utilization</span></div>
    <div class="stat"><b>${model.counts.verified}</b><span>messages verified</span></div>
    <div class="stat ${model.counts.unverified ? 'alarm' : ''}"><b data-test="region-unverified">${model.counts.unverified}</b><span>unverified</span></div>
    <table class="cap"><tr><th>resource</th><th>capacity (live groups)</th></tr>${Object.entries((s && s.capacity) || {}).sort().map(([k, v]) => `<tr><td>${esc(k)}</td><td>${num(v, 0, 1e12)?.toFixed(2) ?? '?'}</td></tr>`).join('')}</table>
    <table class="cap"><tr><th>trust level</th><th>nodes</th></tr>${Object.entries((s && s.trust) || {}).sort().map(([k, v]) => `<tr><td>${esc(k)}</td><td>${count(v)}</td></tr>`).join('')}</table></div>
    <p class="dim">Region ${esc(model.site)}/${esc(model.region)} · tier ${esc(c.tier)} · coordinator <span class="mono">${esc(c.coordinator)}</span> <span class="badge ${c.status === 'online' ? 'ok' : 'bad'}">${esc(c.status)}</span> · epoch ${esc(c.epoch)} · pinned key <span class="mono">${hex(model.pinnedKey, 8)}…</span> · totals from the region's own signed summary</p>`
  const attention = groups.filter((u) => needsAttention(model, u))
  const listed = model.attention ? attention : groups
  const pages = Math.max(1, Math.ceil(listed.length / PAGE_ROWS))
  model.page = Math.max(0, Math.min(model.page, pages - 1))
  const first = model.page * PAGE_ROWS
  const pager = `<div class="pager" data-test="region-pager"><button data-page="-1" ${model.page ? '' : 'disabled'}>‹ previous</button>
    <span>groups <b>${listed.length ? first + 1 : 0}–${Math.min(first + PAGE_ROWS, listed.length)}</b> of <b data-test="region-listed">${listed.length}</b> · page ${model.page + 1} of ${pages}</span>
    <button data-page="1" ${model.page + 1 < pages ? '' : 'disabled'}>next ›</button>
    <label><input type="checkbox" data-attention ${model.attention ? 'checked' : ''}> only the ${attention.length} needing attention (not alive, link not up, or refused messages)</label></div>`
  const rows = listed.slice(first, first + PAGE_ROWS).map((u) => {
    const st = model.status(u)
    const link = model.link(u)
    const sm = u.summary || {}
    const g = u.gateway
    const bad = u.bad.size > 0
    return `<tr data-group="${esc(u.key)}" data-status="${st}" data-link="${link}" data-unverified="${bad ? 'yes' : 'no'}" data-unverified-count="${u.unverified}" class="${bad ? 'unverified' : ''} ${st === 'alive' ? '' : 'offline'} ${model.selected === u.key ? 'selected' : ''}">
      <td class="mono">${bad ? '<span class="flag">⚠ unverified</span> ' : ''}${esc(u.key)}${u.unverified && !bad ? ` <span class="dim">(${u.unverified} refused)</span>` : ''}</td>
      <td><span class="badge ${STATUS_CLASS[st]}">${st}</span> ${u.standing && u.standing.why ? esc(u.standing.why) : ''}</td>
      <td>${esc(sm.epoch ?? '—')}</td>
      <td>${u.summary ? `${count(sm.online)}/${count(sm.members)}` : '—'}</td>
      <td>${u.summary ? pct(num(sm.utilization, 0, 1)) : '—'}</td>
      <td>${capacityText(sm.capacity)}</td>
      <td>${trustText(sm.trust)}</td>
      <td class="mono">${u.standing ? hex(u.standing.public_key, 6) + '…' : '—'}</td>
      <td><span class="badge ${LINK_CLASS[link]}">${link}</span>${g && g.bridge === 'down' ? ' bridge down' : ''}</td>
      <td>${g ? count(g.buffered) : '—'}</td>
      <td class="${g && count(g.dropped) ? 'bad' : ''}">${g ? count(g.dropped) : '—'}</td>
      <td>${ago(u.summaryMs === null ? null : now - u.summaryMs)}</td></tr>`
  })
  const picked = model.selected && model.units.get(model.selected)
  if (!root.querySelector('#region-groups')) {
    root.innerHTML = `<div id="rg-overview"></div><div id="rg-pager"></div>
      <table class="roster"><thead><tr><th>group</th><th>state</th><th>epoch</th><th>nodes</th><th>util</th><th>capacity</th><th>trust</th><th>pinned key</th><th>gateway link</th><th>buffered</th><th>dropped</th><th>summary</th></tr></thead>
      <tbody id="region-groups"></tbody></table>
      <p class="dim">Click a group for its details and where to open its roster.</p>
      <div id="region-detail"></div><h2>Unverified messages</h2><div id="rg-failures"></div>`
    drawn.clear()
  }
  // Only what changed is written to the page: each part, and each row of the table, by its HTML.
  put(root, '#rg-overview', overview)
  put(root, '#rg-pager', pager)
  put(root, '#region-detail', picked ? detail(model, picked, now) : '')
  put(root, '#rg-failures', model.failures.length
    ? `<ul class="events" data-test="region-failures">${model.failures.slice(0, 20).map((f) => `<li class="bad">${new Date(f.at).toLocaleTimeString()} <span class="mono">${esc(f.topic)}</span>: ${esc(f.reason)}</li>`).join('')}</ul>`
    : '<p class="ok">every message so far verified</p>')
  const tbody = root.querySelector('#region-groups')
  const before = drawn.get('rows') || []
  if (before.length !== rows.length || tbody.rows.length !== rows.length) tbody.innerHTML = rows.join('')
  else rows.forEach((html, i) => { if (html !== before[i]) tbody.rows[i].outerHTML = html })
  drawn.set('rows', rows)
}

const drawn = new Map() // part -> the HTML last written there

function put (root, selector, html) {
  if (drawn.get(selector) === html) return
  drawn.set(selector, html)
  root.querySelector(selector).innerHTML = html
}

/** Clicking a group's row shows its details (drill-down) at once; the pager turns pages. */
export function bindRegion (model, root) {
  root.addEventListener('pointerdown', () => { model.pressed = true })
  for (const end of ['pointerup', 'pointercancel']) window.addEventListener(end, () => { model.pressed = false }, true)
  root.addEventListener('click', (ev) => {
    model.pressed = false
    const el = ev.target.closest && ev.target.closest('tr[data-group], button[data-page], input[data-attention]')
    if (!el) return
    if (el.dataset.group) model.selected = model.selected === el.dataset.group ? null : el.dataset.group
    else if (el.dataset.page) model.page += Number(el.dataset.page)
    else { model.attention = el.checked; model.page = 0 }
    model.version++
    const start = performance.now()
    renderRegion(model, root)
    // How long the click waited for the page (input delay) and took to draw: the benchmark reads it.
    model.lastClick = { key: el.dataset.group || null, waitedMs: start - ev.timeStamp, drawMs: performance.now() - start }
  })
}
