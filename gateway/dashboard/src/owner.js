// The owner's panel, served by the agent's local API under /ui/ (docs/api.md: owners, signed requests).
//
// Reads are plain GETs to the agent on 127.0.0.1. Every change is an ApiRequest sealed as COSE_Sign1 with
// the owner's Ed25519 key: a non-extractable WebCrypto key made in this browser at pairing and kept in
// IndexedDB. The agent checks it and answers with a response signed by the node key (the ack), which this
// page verifies (its key must be the node's own: the node id derives from it). Without a secure context
// (a page opened from another host) there is no WebCrypto: the page stays read-only and says why.
import { encode } from 'cborg'
import { openEnvelope, nodeIdFor, hex } from './wire.js'

const API = '/api/v1/resources'
const $ = (id) => document.getElementById(id)
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))

// The settings the panel edits: [name, label, kind, min, max, step, scale (shown = value × scale), unit]
const CONTROLS = [
  ['cpu_allocation_percentage', 'CPU', 'range', 0, 1, 0.05, 100, '%'],
  ['gpu_allocation_percentage', 'GPU', 'range', 0, 1, 0.05, 100, '%'],
  ['memory_allocation_percentage', 'Memory', 'range', 0, 1, 0.05, 100, '%'],
  ['storage_allocation_percentage', 'Storage', 'range', 0, 1, 0.05, 100, '%'],
  ['bandwidth_allocation_percentage', 'Bandwidth', 'range', 0, 1, 0.05, 100, '%'],
  ['max_cpu_temperature', 'CPU temperature limit', 'range', 40, 100, 1, 1, '°C'],
  ['max_gpu_temperature', 'GPU temperature limit', 'range', 40, 100, 1, 1, '°C'],
  ['max_power_consumption', 'Power limit', 'range', 1, 2000, 1, 1, 'W'],
  ['minimum_hourly_rate', 'Minimum rate', 'number', 0, 1000000, 0.01, 1, 'FTNS/h'],
  ['uptime_commitment', 'Uptime commitment', 'range', 0, 1, 0.01, 100, '%'],
  ['min_battery_percent', 'Battery floor', 'range', 0, 100, 5, 1, '%'],
  ['automatic_scaling', 'Automatic scaling', 'checkbox'],
  ['market_participation', 'Take part in the market', 'checkbox'],
  ['offer_on_battery', 'Offer on battery', 'checkbox'],
  ['schedule', 'Weekly schedule', 'text', 'Mon-Fri 18:00-08:00; Sat,Sun   (empty: always)'],
  ['optimize_bounds', 'Auto-optimize bounds', 'text', 'cpu_allocation_percentage=0.2..0.6; max_cpu_temperature=..75   (the node enforces them)'],
  ['security_level', 'Security level', 'select', ['standard', 'high', 'maximum']]
]

// ---- the owner key (IndexedDB) ------------------------------------------------------------------
function db () {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open('prsm-owner', 1)
    req.onupgradeneeded = () => req.result.createObjectStore('keys')
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}
async function idb (mode, fn) {
  const d = await db()
  return new Promise((resolve, reject) => {
    const tx = d.transaction('keys', mode)
    const req = fn(tx.objectStore('keys'))
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}
async function ownerKey (create) {
  let pair = await idb('readonly', (s) => s.get('owner'))
  if (!pair && create) {
    pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify'])
    await idb('readwrite', (s) => s.put(pair, 'owner'))
  }
  if (!pair) return null
  const pub = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey))
  return { pair, pub, id: nodeIdFor(pub) }
}

// ---- the signed request ---------------------------------------------------------------------------
function nextSeq () {
  const last = Number(localStorage.getItem('prsm-owner:seq') || 0)
  const seq = Math.max(Date.now(), last + 1)
  localStorage.setItem('prsm-owner:seq', String(seq))
  return seq
}
async function seal (key, method, params) {
  const protectedBytes = encode(new Map([[1, -8], [4, key.pub]]))
  const payload = encode({
    t: 'apireq',
    v: 1,
    seq: nextSeq(),
    ts: Date.now(),
    txid: hex(crypto.getRandomValues(new Uint8Array(8))),
    method,
    requester: key.id,
    params
  })
  const toSign = encode(['Signature1', protectedBytes, new Uint8Array(0), payload])
  const sig = new Uint8Array(await crypto.subtle.sign('Ed25519', key.pair.privateKey, toSign))
  const body = encode([protectedBytes, new Map(), payload, sig])
  const out = new Uint8Array(body.length + 1)
  out[0] = 0xd2 // CBOR tag 18: COSE_Sign1
  out.set(body, 1)
  return out
}
async function post (path, httpMethod, bytes) {
  const res = await fetch(path, { method: httpMethod, headers: { 'Content-Type': 'application/cose' }, body: bytes })
  return res.json()
}
function b64 (text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
}
/** Check the node's signed acknowledgement: a valid COSE_Sign1 by this very node, naming our txid. */
function checkAck (answer, node) {
  if (!answer.ack) return { ok: false, why: 'no acknowledgement' }
  const opened = openEnvelope(b64(answer.ack))
  if (!opened.ok) return { ok: false, why: opened.reason }
  if (opened.signer !== node) return { ok: false, why: `signed by ${opened.signer}, not by the node` }
  if (opened.body.txid !== answer.txid) return { ok: false, why: 'acknowledges another request' }
  return { ok: true, accepted: opened.body.ok === true, body: opened.body }
}

// ---- the page -----------------------------------------------------------------------------------
const state = { node: null, key: null, status: null, readOnly: '' }

function note (text, cls = '') {
  $('result').className = cls
  $('result').textContent = text
}

async function change (method, params, httpMethod = 'POST') {
  if (state.readOnly) return note(state.readOnly, 'bad')
  const key = state.key || (state.key = await ownerKey(true))
  const bytes = await seal(key, method, { node: state.node, ...params })
  const path = method === 'update' || method === 'pause' || method === 'auto-optimize' || method === 'verify'
    ? `${API}/${method}/${state.node}` : `${API}/${method}`
  const answer = await post(path, method === 'update' ? 'PUT' : httpMethod, bytes)
  const ack = checkAck(answer, state.node)
  const verdict = ack.ok ? (ack.accepted ? 'acknowledged (signed by the node)' : 'refused by the node') : 'UNVERIFIED answer: ' + ack.why
  const detail = answer.ok ? '' : ` — ${answer.code}: ${answer.error}`
  note(`${method}: ${verdict}${detail}`, answer.ok && ack.ok ? 'ok' : 'bad')
  $('result').dataset.code = answer.ok ? 'ok' : (answer.code || 'error')
  $('result').dataset.acked = String(ack.ok && ack.accepted)
  state.status = null // show the node's values as they now are
  await refresh()
  return answer
}

async function pairWith (code) {
  const key = state.key = await ownerKey(true)
  const bytes = await seal(key, 'pair', { node: state.node, code, label: 'browser ' + navigator.platform })
  const res = await fetch('/api/v1/owner/pair', { method: 'POST', headers: { 'Content-Type': 'application/cose' }, body: bytes })
  const answer = await res.json()
  if (answer.ok) {
    localStorage.setItem('prsm-owner:paired:' + state.node, key.id)
    note(`paired: this browser's key ${key.id} may now change node ${state.node}`, 'ok')
  } else note(`pairing refused — ${answer.code}: ${answer.error}`, 'bad')
}

function renderControls () {
  const s = (state.status && state.status.settings) || {}
  $('controls').innerHTML = CONTROLS.map(([name, label, kind, min, max, step, scale, unit]) => {
    const v = s[name]
    if (kind === 'checkbox') return `<label class="ctl"><span>${label}</span><input type="checkbox" data-setting="${name}" ${v ? 'checked' : ''}></label>`
    if (kind === 'text') return `<label class="ctl wide-ctl"><span>${label}</span><input type="text" data-setting="${name}" value="${esc(v ?? '')}" placeholder="${esc(min)}" spellcheck="false"></label>`
    if (kind === 'select') return `<label class="ctl"><span>${label}</span><select data-setting="${name}">${min.map((o) => `<option ${o === v ? 'selected' : ''}>${o}</option>`).join('')}</select></label>`
    const shown = v === undefined || v === null ? '' : Number(v)
    return `<label class="ctl"><span>${label}</span><input type="${kind}" data-setting="${name}" min="${min}" max="${max}" step="${step}" value="${shown}">
      <output data-for="${name}">${shown === '' ? '—' : +(shown * scale).toFixed(2)} ${unit}</output></label>`
  }).join('')
  for (const input of $('controls').querySelectorAll('input[type=range]')) {
    const c = CONTROLS.find((x) => x[0] === input.dataset.setting)
    input.addEventListener('input', () => { $('controls').querySelector(`output[data-for="${c[0]}"]`).textContent = `${+(input.value * c[6]).toFixed(2)} ${c[7]}` })
  }
}

function edited () {
  const s = (state.status && state.status.settings) || {}
  const out = {}
  for (const el of $('controls').querySelectorAll('[data-setting]')) {
    const name = el.dataset.setting
    let value = el.type === 'checkbox' ? el.checked : el.tagName === 'SELECT' ? el.value : Number(el.value)
    if (name === 'minimum_hourly_rate' || el.type === 'text') value = String(el.value).trim()
    if (String(value) !== String(s[name])) out[name] = value
  }
  return out
}

const ftns = (micro) => (typeof micro === 'number' && Number.isFinite(micro) ? (micro / 1e6).toFixed(6) : '—')
/** The economy's earnings report: gross, electricity and net over its window, and the next day's guess. */
function earningsText (e) {
  const hours = typeof e.hours === 'number' ? `${e.hours} h` : 'the period'
  return `${ftns(e.gross_micro)} gross − ${ftns(e.electricity_micro)} electricity = <b>${ftns(e.net_micro)} FTNS net</b> over ${esc(hours)}` +
    `<br><span class="dim">next day ≈ ${ftns(e.predicted_next_day_micro)} FTNS; power: ${esc(e.power_source || '—')}</span>`
}

async function refresh () {
  try {
    const res = await fetch(`${API}/status/${state.node}`)
    const answer = await res.json()
    if (!answer.ok) throw new Error(answer.error)
    const first = !state.status
    state.status = answer.result
    if (first) renderControls()
  } catch (err) {
    $('status').innerHTML = `<p class="bad">the agent does not answer: ${esc(err.message)}</p>`
    return
  }
  const st = state.status
  const trust = st.trust || {}
  let earnings = null
  try {
    const res = await fetch(`${API}/earnings/${state.node}`)
    const answer = await res.json()
    if (answer.ok) earnings = answer.result
  } catch (err) { /* the coordinator may be away */ }
  $('status').innerHTML = `<dl>
    <dt>node</dt><dd class="mono">${esc(st.node)}</dd>
    <dt>group</dt><dd>${esc(st.site)}/${esc(st.group)} ${st.in_group ? '' : '(not in a group yet)'}</dd>
    <dt>state</dt><dd data-test="offering">${st.paused ? '<b class="warn">paused</b>' : st.offering ? '<b class="ok">offering</b>' : '<b class="warn">held</b>'} ${esc(st.throttle || '')}</dd>
    <dt>trust level</dt><dd>${esc(trust.level || '—')} ${trust.trust !== undefined ? '(' + esc(trust.trust) + ')' : ''}</dd>
    <dt>balance</dt><dd>${trust.balance_micro !== undefined ? (trust.balance_micro / 1e6).toFixed(6) + ' FTNS' : '—'}</dd>
    <dt>earnings</dt><dd data-test="earnings">${earnings ? earningsText(earnings) : '—'}</dd>
    <dt>owners paired</dt><dd>${esc(st.owners)}</dd></dl>
    <p class="dim">offer: ${esc((st.resources || []).map((r) => `${r.type} ${(+r.capacity).toFixed(2)} ${r.unit}`).join(', '))}</p>`
  $('pause').textContent = st.paused ? 'Resume' : 'Pause'
}

async function main () {
  const params = new URLSearchParams(location.hash.slice(1))
  if (location.hash) history.replaceState(null, '', location.pathname)
  state.node = params.get('node') || sessionStorage.getItem('prsm-owner:node')
  if (!state.node) {
    try {
      const health = await (await fetch(`${API}/health`)).json()
      state.node = health.result && health.result.node
    } catch (err) { /* shown below */ }
  }
  if (!state.node) return note('open the link that `prsm-edge owner pair` printed', 'bad')
  sessionStorage.setItem('prsm-owner:node', state.node)
  $('node').textContent = state.node
  if (!window.isSecureContext || !crypto.subtle) {
    state.readOnly = 'Read-only: this page was not opened from this machine (http://127.0.0.1 or localhost), so the browser offers no WebCrypto to hold an owner key. Open it on the node itself to change anything.'
    $('mode').textContent = state.readOnly
    $('mode').className = 'warn'
    for (const b of document.querySelectorAll('button')) b.disabled = true
  } else {
    state.key = await ownerKey(false)
    const code = params.get('pair')
    if (code) await pairWith(code)
    const paired = state.key && localStorage.getItem('prsm-owner:paired:' + state.node) === state.key.id
    $('mode').textContent = paired ? `owner key ${state.key.id} (paired; private key not extractable)` : 'this browser holds no paired owner key: run `prsm-edge owner pair` on the node and open its link; changes from here are refused'
    $('mode').className = paired ? 'ok' : 'warn'
  }
  $('apply').addEventListener('click', () => {
    const settings = edited()
    if (!Object.keys(settings).length) return note('nothing changed')
    change('update', { settings })
  })
  $('pause').addEventListener('click', () => change('pause', { paused: !(state.status && state.status.paused) }))
  // Auto-optimize may move only the settings the owner bounds (the economy's rule): here, each slider's
  // own range. The dry run shows every change with the coordinator's reason before anything is applied.
  const bounds = () => Object.fromEntries(CONTROLS.filter((c) => c[2] === 'range').map((c) => [c[0], [c[3], c[4]]]))
  $('advise').addEventListener('click', async () => {
    const answer = await change('auto-optimize', { dry_run: true, bounds: bounds() })
    const changes = (answer && answer.result && answer.result.changes) || []
    // The bounds the node applied: the owner's standing ones (optimize_bounds) where narrower than a slider.
    const used = Object.entries((answer && answer.result && answer.result.bounds) || {}).filter(([name, [lo, hi]]) => {
      const c = CONTROLS.find((x) => x[0] === name)
      return !c || lo !== c[3] || hi !== c[4]
    })
    const limits = used.length
      ? `<p class="dim" data-test="optimize-bounds">kept within your bounds: ${used.map(([n, [lo, hi]]) => `${esc(n)} ${lo === null ? '…' : esc(lo)}–${hi === null ? '…' : esc(hi)}`).join('; ')}</p>`
      : ''
    $('advice').innerHTML = limits + (changes.length
      ? `<p>The coordinator's advice, inside your bounds:</p><ul data-test="advice">${changes.map((c) => `<li>${esc(c.setting)}: ${esc(c.old)} → <b>${esc(c.new)}</b> <span class="dim">${esc(c.reason || '')}</span></li>`).join('')}</ul><button id="optimize">Apply these</button>`
      : '<p class="dim">no change suggested now</p>')
    const apply = $('optimize')
    if (apply) {
      apply.addEventListener('click', async () => {
        const done = await change('auto-optimize', { bounds: bounds() })
        if (done && done.ok) $('advice').innerHTML = '<p class="ok">applied</p><button id="undo">Undo</button>'
        const undo = $('undo')
        if (undo) undo.addEventListener('click', () => change('auto-optimize', { undo: true }))
      })
    }
  })
  await refresh()
  setInterval(refresh, 3000)
}

document.addEventListener('DOMContentLoaded', main)
