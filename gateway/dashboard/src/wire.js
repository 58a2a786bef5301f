// The prsm wire format in the browser: COSE_Sign1 (Ed25519) over deterministic CBOR.
//
// Mirrors prsm_edge/protocol/envelope.py: #6.18([protected, {}, payload, signature]), protected is the
// bstr-wrapped map {1: -8 (EdDSA) or -19 (Ed25519), 4: kid}, kid is the signer's raw 32-byte public key,
// and the signature covers the CBOR of ["Signature1", protected, h'', payload]. A node id is "n" + the
// lower-case base32 of the first 10 bytes of SHA-256(public key).
import { decode, encode } from 'cborg'
import * as ed from '@noble/ed25519'
import { sha256, sha512 } from '@noble/hashes/sha2.js'

ed.hashes.sha512 = sha512

export const MAX_ENVELOPE_BYTES = 64 * 1024
const ACCEPTED_ALGS = new Set([-8, -19])
const EMPTY = new Uint8Array(0)
const B32 = 'abcdefghijklmnopqrstuvwxyz234567'

/** Lower-case RFC 4648 base32 without padding. */
export function base32 (bytes) {
  let out = ''
  let bits = 0
  let value = 0
  for (const b of bytes) {
    value = (value << 8) | b
    bits += 8
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31]
  return out
}

/** The node id that belongs to a raw Ed25519 public key. */
export function nodeIdFor (publicKey) {
  return 'n' + base32(sha256(publicKey).subarray(0, 10))
}

export function hex (bytes, n = bytes.length) {
  return Array.from(bytes.subarray(0, n), (b) => b.toString(16).padStart(2, '0')).join('')
}

export function sameBytes (a, b) {
  if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array) || a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

class Refused extends Error {}

const outerOptions = {
  tags: Object.assign([], { 18: (inner) => ({ cose: inner() }) }),
  allowIndefinite: false,
  allowUndefined: false,
  allowBigInt: false,
  rejectDuplicateMapKeys: true,
  useMaps: true
}
const bodyOptions = {
  allowIndefinite: false,
  allowUndefined: false,
  allowBigInt: false,
  rejectDuplicateMapKeys: true
}

/**
 * Check one envelope's structure and decode it, without the signature: {ok: true, kid, signer, body,
 * toSign, signature} ready to verify, or {ok: false, reason, …}. Never shown as verified by itself.
 */
export function parseEnvelope (data) {
  try {
    if (!(data instanceof Uint8Array)) throw new Refused('not bytes')
    if (data.length > MAX_ENVELOPE_BYTES) throw new Refused(`${data.length} bytes exceeds ${MAX_ENVELOPE_BYTES}`)
    let outer
    try {
      outer = decode(data, outerOptions)
    } catch (err) {
      throw new Refused('undecodable CBOR: ' + err.message)
    }
    const items = outer && outer.cose !== undefined ? outer.cose : outer
    if (!Array.isArray(items) || items.length !== 4) throw new Refused('not a COSE_Sign1 array of four items')
    const [protectedBytes, unprotected, payload, signature] = items
    if (!(protectedBytes instanceof Uint8Array) || !(payload instanceof Uint8Array)) {
      throw new Refused('protected header and payload must be byte strings')
    }
    if (!(signature instanceof Uint8Array) || signature.length !== 64) throw new Refused('an Ed25519 signature is 64 bytes')
    if (!(unprotected instanceof Map)) throw new Refused('unprotected header must be a map')
    let header
    try {
      header = decode(protectedBytes, { ...outerOptions, tags: [] })
    } catch (err) {
      throw new Refused('undecodable protected header')
    }
    if (!(header instanceof Map)) throw new Refused('protected header must be a map')
    const alg = header.get(1)
    if (!ACCEPTED_ALGS.has(alg)) throw new Refused(`algorithm ${alg} is not EdDSA/Ed25519`)
    const kid = header.get(4)
    if (!(kid instanceof Uint8Array) || kid.length !== 32) throw new Refused('no 32-byte Ed25519 key id')
    const signer = nodeIdFor(kid)
    let body
    try {
      body = decode(payload, bodyOptions)
    } catch (err) {
      return { ok: false, kid, signer, reason: 'undecodable payload: ' + err.message }
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body) || body instanceof Uint8Array) {
      return { ok: false, kid, signer, reason: 'payload is not a CBOR map' }
    }
    const toSign = encode(['Signature1', protectedBytes, EMPTY, payload])
    return { ok: true, kid, signer, body, toSign, signature }
  } catch (err) {
    if (err instanceof Refused) return { ok: false, reason: err.message }
    return { ok: false, reason: 'malformed: ' + err.message }
  }
}

/** A parsed envelope with its signature's verdict: what the models take. */
function settle (parsed, good) {
  const { kid, signer, body } = parsed
  if (!good) return { ok: false, kid, signer, body, reason: 'signature does not verify' }
  return { ok: true, kid, signer, body }
}

function jsVerify (parsed) {
  try {
    return ed.verify(parsed.signature, parsed.toSign, parsed.kid, { zip215: false })
  } catch (err) {
    return false
  }
}

/**
 * Open one envelope: returns {ok: true, kid, signer, body} when the structure is COSE_Sign1 and the
 * signature verifies under the key it names, else {ok: false, reason, kid?, signer?, body?}. Whether the
 * named key is the right one for the topic is the caller's question (see Verifier in model.js).
 * Synchronous, in JavaScript; the live page uses an EnvelopeOpener (batches, WebCrypto where it can).
 */
export function openEnvelope (data) {
  const parsed = parseEnvelope(data)
  return parsed.ok ? settle(parsed, jsVerify(parsed)) : parsed
}

// RFC 8032, section 7.1, test 1 (the empty message): WebCrypto must accept it and refuse it altered.
const VECTOR_KEY = 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a'
const VECTOR_SIG = 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b'
const unhex = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16))

/** Whether this browser verifies Ed25519 in WebCrypto (a secure context with the algorithm, passing the
 * RFC 8032 vector and refusing a flipped bit). */
export async function webCryptoEd25519 () {
  try {
    if (!globalThis.isSecureContext || !globalThis.crypto || !crypto.subtle) return false
    const key = await crypto.subtle.importKey('raw', unhex(VECTOR_KEY), { name: 'Ed25519' }, false, ['verify'])
    const sig = unhex(VECTOR_SIG)
    const good = await crypto.subtle.verify({ name: 'Ed25519' }, key, sig, EMPTY)
    sig[0] ^= 1
    const bad = await crypto.subtle.verify({ name: 'Ed25519' }, key, sig, EMPTY)
    return good === true && bad === false
  } catch (err) {
    return false
  }
}

const MAX_KEYS = 16384
const SLICE_MS = 12
/* global __VERIFY_WORKER__ */
// The bundled verify-worker.js as text (build.mjs defines it; absent when this module runs unbundled).
const WORKER_SOURCE = typeof __VERIFY_WORKER__ === 'string' ? __VERIFY_WORKER__ : null

/** JavaScript Ed25519 in a few Web Workers started from a Blob URL: the page's thread stays free. */
class WorkerPool {
  constructor (size) {
    const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }))
    this.waiting = new Map() // job id -> {resolve, reject}
    this.next = 0
    this.broken = false
    this.workers = Array.from({ length: size }, () => {
      const w = new Worker(url)
      w.onmessage = (ev) => {
        const p = this.waiting.get(ev.data.id)
        if (p) { this.waiting.delete(ev.data.id); p.resolve(ev.data.results) }
      }
      w.onerror = () => {
        this.broken = true
        for (const p of this.waiting.values()) p.reject(new Error('a verifier worker failed'))
        this.waiting.clear()
      }
      return w
    })
  }

  /** Verdicts for [[signature, message, key], …], in order, spread over the workers. */
  run (jobs) {
    const chunk = Math.max(1, Math.ceil(jobs.length / this.workers.length))
    const parts = []
    for (let i = 0, w = 0; i < jobs.length; i += chunk, w++) {
      const id = ++this.next
      const part = jobs.slice(i, i + chunk)
      parts.push(new Promise((resolve, reject) => {
        this.waiting.set(id, { resolve, reject })
        this.workers[w].postMessage({ id, jobs: part })
      }))
    }
    return Promise.all(parts).then((r) => r.flat())
  }
}

function startPool () {
  if (!WORKER_SOURCE || typeof Worker === 'undefined' || typeof Blob === 'undefined') return null
  try {
    const cores = (globalThis.navigator && navigator.hardwareConcurrency) || 2
    return new WorkerPool(Math.max(2, Math.min(4, cores)))
  } catch (err) {
    return null // workers refused (a policy): verify on the page's thread
  }
}

/**
 * Opens envelopes in batches: structure and CBOR here, signatures by WebCrypto's Ed25519 (off the main
 * thread, in parallel) when `webCrypto` is true, else by the bundled JavaScript verifier in slices of a
 * few milliseconds that yield to the page between them. `nested(body)` names an inner envelope to open
 * with its outer one (a gateway's stream record carries the group coordinator's signed item): the result
 * then has `.item`, opened the same way.
 */
export class EnvelopeOpener {
  constructor ({ webCrypto, nested = () => null, workers = true }) {
    this.kind = webCrypto ? 'webcrypto' : 'javascript'
    this.nested = nested
    this.keys = new Map() // key hex -> Promise<CryptoKey | null>
    this.pool = !webCrypto && workers ? startPool() : null
  }

  /** How many Web Workers verify (0: WebCrypto, or the page's own thread). */
  get threads () {
    return this.pool && !this.pool.broken ? this.pool.workers.length : 0
  }

  key (kid) {
    const id = hex(kid)
    let k = this.keys.get(id)
    if (!k) {
      k = crypto.subtle.importKey('raw', kid, { name: 'Ed25519' }, false, ['verify']).catch(() => null)
      this.keys.set(id, k)
      if (this.keys.size > MAX_KEYS) this.keys.delete(this.keys.keys().next().value)
    }
    return k
  }

  async webVerify (parsed) {
    const key = await this.key(parsed.kid)
    if (!key) return false
    try {
      return await crypto.subtle.verify({ name: 'Ed25519' }, key, parsed.signature, parsed.toSign)
    } catch (err) {
      return false
    }
  }

  /** Open every payload (null entries stay null); the results are in the same order. */
  async openAll (payloads) {
    const parsed = payloads.map((p) => (p && p.length ? parseEnvelope(p) : null))
    const inner = parsed.map((p) => {
      const item = p && p.ok ? this.nested(p.body) : null
      return item instanceof Uint8Array ? parseEnvelope(item) : null
    })
    const verdicts = await this.verifyAll([...parsed, ...inner])
    const out = parsed.map((p, i) => {
      if (!p || !p.ok) return p
      const opened = settle(p, verdicts[i])
      const q = inner[i]
      if (q) opened.item = q.ok ? settle(q, verdicts[parsed.length + i]) : q
      return opened
    })
    return out
  }

  async verifyAll (parsed) {
    if (this.kind === 'webcrypto') return Promise.all(parsed.map((p) => (p && p.ok ? this.webVerify(p) : false)))
    if (this.threads) {
      const todo = []
      parsed.forEach((p, i) => { if (p && p.ok) todo.push(i) })
      try {
        const verdicts = await this.pool.run(todo.map((i) => [parsed[i].signature, parsed[i].toSign, parsed[i].kid]))
        const out = new Array(parsed.length).fill(false)
        todo.forEach((i, k) => { out[i] = verdicts[k] === true })
        return out
      } catch (err) { /* a worker failed: this batch, and the next ones, on the page's thread */ }
    }
    const out = new Array(parsed.length).fill(false)
    let slice = performance.now()
    for (let i = 0; i < parsed.length; i++) {
      if (parsed[i] && parsed[i].ok) out[i] = jsVerify(parsed[i])
      if (performance.now() - slice > SLICE_MS) {
        await new Promise((resolve) => setTimeout(resolve, 0)) // let the page draw and take clicks
        slice = performance.now()
      }
    }
    return out
  }
}
