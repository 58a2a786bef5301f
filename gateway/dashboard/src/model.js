// What the page knows of one group, built only from messages whose signatures verified.
//
// Trust rules (the same the coordinator applies, seen from a read-only viewer):
// - coord/state must be signed by the key it names, for the coordinator id derived from that key; the
//   first such key is pinned (or the one given in the URL as key=HEX), and a different key later is
//   flagged, never silently accepted;
// - roster, summary, beacon, commands and API responses must be signed by the pinned coordinator key
//   (messages that arrive before the coordinator's state wait in a bounded queue);
// - a node's topics must be signed by the key its node id is derived from and, once the roster lists
//   the node, by the key the roster names; the body's node field must match the topic;
// - anything else is marked unverified, counted, and never changes what the page shows.
import { openEnvelope, nodeIdFor, sameBytes, hex } from './wire.js'

export const MAX_NODES = 1000
const MAX_PENDING = 500
const MAX_FAILURES = 100
const MAX_EVENTS = 60
const MAX_LEASES = 2000

function topicParts (topic) {
  const p = topic.split('/')
  if (p.length < 5 || p[0] !== 'prsm' || p[1] !== 'v1') return null
  const site = p[2]
  if (p[3] === 'gw' && p.length === 6 && p[5] === 'state') return { kind: 'gw', site, gateway: p[4] }
  const group = p[3]
  const rest = p.slice(4)
  if (rest[0] === 'coord' && rest.length === 2) return { kind: 'coord/' + rest[1], site, group }
  if (rest[0] === 'summary' && rest.length === 1) return { kind: 'summary', site, group }
  if (rest[0] === 'market' && rest.length === 2) return { kind: 'market', site, group, listing: rest[1] }
  if (rest[0] === 'node' && rest.length === 3) return { kind: 'node', leaf: rest[2], site, group, node: rest[1] }
  if (rest[0] === 'node' && rest.length === 4) return { kind: 'node/' + rest[2], verb: rest[3], site, group, node: rest[1] }
  if (rest[0] === 'api' && rest.length === 4) return { kind: 'api/' + rest[2], method: rest[1], site, group, client: rest[3] }
  return null
}

function finite (x, lo = -Infinity, hi = Infinity) {
  return typeof x === 'number' && Number.isFinite(x) && x >= lo && x <= hi ? x : null
}

export class GroupModel {
  constructor ({ site, group, pinnedKey = null, now = () => Date.now() }) {
    this.site = site
    this.group = group
    this.now = now
    this.pinnedKey = pinnedKey // Uint8Array | null
    this.coord = null // the verified CoordState body
    this.coordKeyMismatch = null
    this.roster = new Map() // node -> RosterEntry body
    this.rosterEpoch = null
    this.summary = null
    this.beacon = null
    this.ledgerHead = null // {count, head}: the coordinator's retained FTNS ledger chain head
    this.rollup = null // the coordinator's retained trend rollup (trends.js reads it)
    this.listings = new Map() // node -> the coordinator's retained market listing
    this.leases = new Map() // lease_id -> lease (from the coordinator's lease commands), until it ends
    this.nodes = new Map()
    this.gateways = new Map()
    this.pending = []
    this.failures = []
    this.events = []
    this.counts = { verified: 0, unverified: 0, challenges: 0, proofs: 0, openings: 0, accepted: 0, rejected: 0, levelChanges: 0 }
    this.version = 0
  }

  node (id) {
    let n = this.nodes.get(id)
    if (!n && this.nodes.size < MAX_NODES) {
      n = { id, birth: null, state: null, hb: null, lastSeenMs: null, lastSeq: null, gaps: 0, badTopics: new Map(), badCount: 0 }
      this.nodes.set(id, n)
    }
    return n
  }

  fail (topic, reason, nodeId = null) {
    this.counts.unverified++
    this.failures.unshift({ at: this.now(), topic, reason })
    if (this.failures.length > MAX_FAILURES) this.failures.length = MAX_FAILURES
    if (nodeId) {
      const n = this.node(nodeId)
      if (n) {
        n.badCount++
        n.badTopics.set(topic, reason)
        if (n.badTopics.size > 16) n.badTopics.delete(n.badTopics.keys().next().value)
      }
    }
    this.version++
  }

  event (text, cls = '') {
    this.events.unshift({ at: this.now(), text, cls })
    if (this.events.length > MAX_EVENTS) this.events.length = MAX_EVENTS
  }

  /**
   * Feed one MQTT message; `retained` is the packet's retain flag (a stored message, not a live one);
   * `opened` is the payload already opened and its signature checked (EnvelopeOpener), else it is here.
   */
  receive (topic, payload, retained = false, opened = null) {
    const t = topicParts(topic)
    if (!t) return
    if (t.kind === 'gw') return this.gatewayState(topic, t, payload, opened)
    if (t.site !== this.site || t.group !== this.group) return
    if (t.kind === 'node/bench') return // the network benchmark's raw echo bytes: not signed, not state
    if (payload.length === 0) return this.cleared(t)
    opened = opened || openEnvelope(payload)
    const nodeOfTopic = t.node || (t.kind === 'api/req' ? t.client : null)
    if (!opened.ok) return this.fail(topic, opened.reason, nodeOfTopic)
    if (t.kind === 'coord/state') return this.coordState(topic, opened)
    if (t.kind === 'api/req') return this.sideMessage(topic, t.client, opened, retained)
    if (t.kind === 'node') return this.fromNode(topic, t, opened, retained)
    // Everything else is the coordinator's.
    if (!this.coord) {
      if (this.pending.length < MAX_PENDING) this.pending.push([topic, payload, retained, opened])
      return
    }
    if (!sameBytes(opened.kid, this.coord.public_key)) {
      return this.fail(topic, `signed by ${opened.signer}, not by the coordinator ${this.coord.coordinator}`, t.node)
    }
    this.counts.verified++
    this.fromCoordinator(topic, t, opened.body)
    this.version++
  }

  cleared (t) {
    if (t.kind === 'node' && t.leaf === 'birth') this.nodes.delete(t.node)
    this.version++
  }

  coordState (topic, opened) {
    const b = opened.body
    if (b.t !== 'cstate' || b.coordinator !== opened.signer || !sameBytes(b.public_key, opened.kid)) {
      return this.fail(topic, 'coordinator state not signed by the key it names')
    }
    if (b.site !== this.site || b.group !== this.group) return this.fail(topic, 'coordinator state names another group')
    if (this.pinnedKey && !sameBytes(this.pinnedKey, opened.kid)) {
      this.coordKeyMismatch = { coordinator: b.coordinator, key: hex(opened.kid) }
      return this.fail(topic, `coordinator key ${hex(opened.kid, 8)}… is not the pinned key ${hex(this.pinnedKey, 8)}…`)
    }
    if (!this.pinnedKey) this.pinnedKey = opened.kid
    const before = this.coord
    this.coord = { ...b, receivedMs: this.now() }
    this.counts.verified++
    if (!before || before.status !== b.status || before.epoch !== b.epoch) {
      this.event(`coordinator ${b.status}, epoch ${b.epoch}`, b.status === 'online' ? 'ok' : 'bad')
    }
    this.version++
    const pending = this.pending
    this.pending = []
    for (const [tp, pl, rt, op] of pending) this.receive(tp, pl, rt, op)
  }

  // An API request, signed by the client its topic names: a node, or an owner key (which is not a node
  // and gets no row). It is checked and counted, and a node's counts in its sequence (no false gaps).
  sideMessage (topic, client, opened, retained) {
    if (opened.signer !== client) return this.fail(topic, `signed by ${opened.signer}, not by the topic's client ${client}`)
    this.counts.verified++
    const n = this.nodes.get(client)
    if (n) {
      if (!retained) n.lastSeenMs = this.now()
      this.trackSeq(n, opened.body, retained)
    }
    this.version++
  }

  /** Count the gaps in a node's sequence numbers, on live messages, from its latest birth on. */
  trackSeq (n, b, retained) {
    const seq = finite(b.seq, 0)
    if (seq === null || retained) return
    if (b.t === 'nbirth' || n.lastSeq === null) n.lastSeq = seq
    else if (seq > n.lastSeq) {
      if (seq > n.lastSeq + 1) n.gaps += seq - n.lastSeq - 1
      n.lastSeq = seq
    }
  }

  fromNode (topic, t, opened, retained) {
    const id = t.node || t.client
    const b = opened.body
    if (opened.signer !== id) return this.fail(topic, `signed by ${opened.signer}, not by the topic's node ${id}`, id)
    const entry = this.roster.get(id)
    if (entry && entry.public_key && entry.public_key.length && !sameBytes(entry.public_key, opened.kid)) {
      return this.fail(topic, 'signed by a key other than the roster names for this node', id)
    }
    const named = b.node ?? b.voter ?? b.requester
    if (named !== undefined && named !== id) return this.fail(topic, `body names ${named}, topic names ${id}`, id)
    const n = this.node(id)
    if (!n) return
    this.counts.verified++
    n.badTopics.delete(topic)
    // Last seen: the node itself speaking live, not its retained messages or the broker's Will for it.
    if (!retained && !(b.t === 'nstate' && b.status === 'offline')) n.lastSeenMs = this.now()
    this.trackSeq(n, b, retained)
    switch (b.t) {
      case 'nbirth':
        if (!sameBytes(b.public_key, opened.kid)) return this.fail(topic, 'birth names another public key', id)
        n.birth = b
        if (!retained) this.event(`${id} announced (${b.device_class})`, 'ok')
        break
      case 'nstate':
        if (n.state && n.state.status !== b.status && !retained) this.event(`${id} ${b.status}`, b.status === 'online' ? 'ok' : 'bad')
        if (!n.state || b.bdseq >= n.state.bdseq || b.status === 'online') n.state = b
        break
      case 'hb':
        n.hb = {
          cpu: finite(b.cpu_util, 0, 1),
          mem: finite(b.mem_util, 0, 1),
          temp: finite(b.temperature_c ?? null, -100, 200),
          power: finite(b.power_w ?? null, 0, 1e5),
          offering: b.offering !== false,
          throttle: typeof b.throttle === 'string' ? b.throttle.slice(0, 120) : '',
          uptime: finite(b.uptime_s, 0)
        }
        break
      case 'claim':
        if (n.birth) n.birth = { ...n.birth, resources: b.resources }
        break
      case 'bproof':
        this.counts.proofs++
        break
      case 'bopen':
        this.counts.openings++
        break
      case 'vote':
        b.accept ? this.counts.accepted++ : this.counts.rejected++
        this.event(`${b.voter} ${b.accept ? 'accepted' : 'REJECTED'} ${b.subject} (round ${b.round})${b.reason ? ': ' + b.reason : ''}`, b.accept ? '' : 'bad')
        break
    }
    this.version++
  }

  fromCoordinator (topic, t, b) {
    switch (t.kind) {
      case 'coord/roster': {
        if (b.t !== 'roster') return
        const next = new Map()
        for (const e of Array.isArray(b.members) ? b.members.slice(0, MAX_NODES) : []) {
          if (typeof e.node !== 'string') continue
          if (e.public_key && e.public_key.length === 32 && nodeIdFor(e.public_key) !== e.node) {
            this.fail(topic, `roster lists ${e.node} with a key that is not its own`)
            continue
          }
          const old = this.roster.get(e.node)
          if (old && old.level !== e.level) {
            this.counts.levelChanges++
            this.event(`${e.node}: ${old.level} → ${e.level}`, 'ok')
          }
          next.set(e.node, e)
          this.node(e.node)
        }
        this.roster = next
        this.rosterEpoch = b.epoch
        break
      }
      case 'summary':
        if (b.t === 'summary') this.summary = b
        break
      case 'coord/beacon':
        if (b.t === 'beacon') this.beacon = b
        break
      case 'coord/ledger':
        if (b.t === 'lhead') this.ledgerHead = { count: b.count, head: b.head }
        break
      case 'coord/rollup':
        if (b.t === 'rollup' && b.site === this.site && b.group === this.group) this.rollup = b
        break
      case 'market':
        if (b.t === 'listing' && b.node === t.listing && this.listings.size < MAX_NODES) this.listings.set(t.listing, b)
        break
      case 'node/cmd':
        if (b.verb === 'lease' && b.args && typeof b.args.lease_id === 'string') {
          if (this.leases.size < MAX_LEASES) this.leases.set(b.args.lease_id, { ...b.args, node: t.node })
          this.event(`lease ${b.args.lease_id} to ${t.node}`)
        } else if (b.verb === 'lease_end' && b.args) {
          this.leases.delete(b.args.lease_id)
          this.event(`lease ${b.args.lease_id} ended (${b.args.why || ''})`)
        } else if (b.verb === 'challenge') this.counts.challenges++
        else if (b.verb === 'settings' || b.verb === 'redirect' || b.verb === 'rebirth') this.event(`coordinator → ${t.node}: ${b.verb}`)
        break
    }
  }

  gatewayState (topic, t, payload, opened) {
    if (t.site !== this.site) return
    opened = opened || openEnvelope(payload)
    if (!opened.ok) return this.fail(topic, opened.reason)
    if (opened.signer !== t.gateway && opened.body.gateway !== undefined && opened.body.gateway !== t.gateway) {
      return this.fail(topic, `gateway state signed by ${opened.signer}`)
    }
    this.counts.verified++
    this.gateways.set(t.gateway, { ...opened.body, signer: opened.signer, receivedMs: this.now() })
    this.version++
  }

  /** Leases still running at ``nowMs`` (ended ones are dropped). */
  activeLeases (nowMs) {
    for (const [id, l] of this.leases) if (typeof l.end_ms === 'number' && l.end_ms < nowMs) this.leases.delete(id)
    return [...this.leases.values()]
  }

  /** Is this node online: its own signed state when present, else the roster's word. */
  online (n) {
    if (n.state) return n.state.status === 'online'
    const e = this.roster.get(n.id)
    return e ? !!e.online : false
  }

  /** The numbers the overview and the trend charts show, computed from what is known now. */
  overview () {
    let online = 0
    let utilSum = 0
    let utilN = 0
    const capacity = {}
    const units = {}
    const trust = {}
    for (const n of this.nodes.values()) {
      if (!this.online(n)) continue
      online++
      if (n.hb && n.hb.cpu !== null) { utilSum += n.hb.cpu; utilN++ }
      const level = this.roster.get(n.id)?.level || 'self_reported'
      trust[level] = (trust[level] || 0) + 1
      if (n.hb && !n.hb.offering) continue
      for (const r of (n.birth && Array.isArray(n.birth.resources) ? n.birth.resources : [])) {
        const c = finite(r.capacity, 0, 1e9)
        if (c === null || typeof r.type !== 'string') continue
        capacity[r.type] = (capacity[r.type] || 0) + c
        units[r.type] = r.unit
      }
    }
    return { online, members: this.roster.size, utilization: utilN ? utilSum / utilN : null, capacity, units, trust }
  }
}
