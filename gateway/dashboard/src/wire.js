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
 * Open one envelope: returns {ok: true, kid, signer, body} when the structure is COSE_Sign1 and the
 * signature verifies under the key it names, else {ok: false, reason, kid?, signer?, body?}. Whether the
 * named key is the right one for the topic is the caller's question (see Verifier in model.js).
 */
export function openEnvelope (data) {
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
    let good = false
    try {
      good = ed.verify(signature, toSign, kid, { zip215: false })
    } catch (err) {
      good = false
    }
    if (!good) return { ok: false, kid, signer, body, reason: 'signature does not verify' }
    return { ok: true, kid, signer, body }
  } catch (err) {
    if (err instanceof Refused) return { ok: false, reason: err.message }
    return { ok: false, reason: 'malformed: ' + err.message }
  }
}
