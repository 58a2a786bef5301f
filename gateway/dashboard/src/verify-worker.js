// The JavaScript Ed25519 verifier in a Web Worker (a Blob URL made from this bundle, see build.mjs), for
// pages without WebCrypto's Ed25519 (not a secure context): several of these verify in parallel, off the
// page's thread. In: {id, jobs: [[signature, message, publicKey], …]}; out: {id, results: [bool, …]}.
import * as ed from '@noble/ed25519'
import { sha512 } from '@noble/hashes/sha2.js'

ed.hashes.sha512 = sha512

self.onmessage = (ev) => {
  const { id, jobs } = ev.data
  const results = jobs.map(([sig, msg, key]) => {
    try {
      return ed.verify(sig, msg, key, { zip215: false })
    } catch (err) {
      return false
    }
  })
  self.postMessage({ id, results })
}
