// Trend history from the coordinator's retained rollup (prsm/v1/{site}/{group}/coord/rollup), merged
// with the page's own live ring buffer, so the charts show hours and days of history after a reload
// even with nothing in localStorage.
//
// The rollup reaches this module only through GroupModel, which accepts it only when its COSE_Sign1
// verifies under the pinned coordinator key (like every coordinator message). Its format is
// prsm_edge/protocol/rollups.py: per resolution, `count` slots of `step_s` seconds from `start_s`, each
// column packed as one big-endian unsigned integer per slot (2 bytes; 8 for `earned`), all ones where
// the coordinator took no sample. Shares are in ‰, `earned` in µFTNS credited during the slot.

export const MAX_SLOTS = 4096 // more than a rollup ever carries (6 h of minutes + a week of hours)

/** One packed column back to numbers (null where no sample); null if it does not fit `count`. */
export function unpackColumn (bytes, count) {
  if (!(bytes instanceof Uint8Array) || !Number.isInteger(count) || count <= 0 || count > MAX_SLOTS) return null
  if (bytes.length % count !== 0) return null
  const width = bytes.length / count
  if (width !== 2 && width !== 8) return null
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out = new Array(count)
  for (let i = 0; i < count; i++) {
    if (width === 2) {
      const v = view.getUint16(2 * i)
      out[i] = v === 0xffff ? null : v
    } else {
      const hi = view.getUint32(8 * i)
      const lo = view.getUint32(8 * i + 4)
      out[i] = hi === 0xffffffff && lo === 0xffffffff ? null : hi * 4294967296 + lo
    }
  }
  return out
}

/** The rollup's series, finest first: [{step, start, count, columns: {name: values}}]. */
export function decodeRollup (body) {
  if (!body || body.t !== 'rollup' || !Array.isArray(body.series)) return []
  const out = []
  for (const s of body.series.slice(0, 4)) {
    const { step_s: step, start_s: start, count } = s || {}
    if (!Number.isInteger(step) || step <= 0 || !Number.isInteger(start) || !Number.isInteger(count) || count <= 0) continue
    const columns = {}
    for (const [name, bytes] of Object.entries(s.columns || {})) {
      const values = unpackColumn(bytes, count)
      if (values) columns[name] = values
    }
    out.push({ step, start, count, columns })
  }
  return out.sort((a, b) => a.step - b.step)
}

/**
 * Rows [t (s), …pick(at, verifiedAt, i)] from the rollup: the finest series where it reaches, a coarser
 * one for the time before it; a slot with no `online` value (no sample) is a row of nulls (a gap).
 */
function rowsOf (body, width, pick) {
  const rows = []
  let before = Infinity // rows already cover [before, …)
  for (const s of decodeRollup(body)) {
    const c = s.columns
    const verifiedAt = (i) => {
      let n = null
      for (const [name, values] of Object.entries(c)) {
        if (!name.startsWith('trust:') || name === 'trust:self_reported' || values[i] === null) continue
        n = (n || 0) + values[i]
      }
      return n
    }
    const at = (name, i) => (c[name] ? c[name][i] : null)
    const own = []
    for (let i = 0; i < s.count; i++) {
      const t = s.start + i * s.step
      if (t + s.step > before) break
      if (at('online', i) === null) { own.push([t, ...new Array(width).fill(null)]); continue }
      own.push([t, ...pick(at, verifiedAt, i)])
    }
    rows.unshift(...own)
    if (s.count) before = Math.min(before, s.start)
  }
  return rows.sort((a, b) => a[0] - b[0])
}

const share = (x) => (x === null ? null : x / 1000)

/** A group's chart rows [t (s), cpu share 0–1, online, verified above self-report, FTNS earned in the slot]. */
export function rollupRows (body) {
  return rowsOf(body, 4, (at, verifiedAt, i) => {
    const earned = at('earned', i)
    return [share(at('cpu', i)), at('online', i), verifiedAt(i), earned === null ? null : earned / 1e6]
  })
}

/** A region's chart rows [t (s), utilization share 0–1, online nodes, verified above self-report, groups
 * alive, groups dead] from the region coordinator's rollup (protocol/rollups.py region_sample). */
export function regionRows (body) {
  return rowsOf(body, 5, (at, verifiedAt, i) => [share(at('cpu', i)), at('online', i), verifiedAt(i), at('groups_alive', i), at('groups_dead', i)])
}

/** The rollup's rows, then the live buffer's rows [t, cpu, online, verified] newer than its last slot. */
export function mergeTrends (historyRows, liveRows) {
  const last = historyRows.length ? historyRows[historyRows.length - 1][0] : -Infinity
  const live = liveRows.filter((r) => r[0] > last).map((r) => [r[0], r[1], r[2], r[3], null])
  return [...historyRows, ...live]
}

/** Rows as uPlot columns. */
export function columnsOf (rows) {
  const width = rows.length ? rows[0].length : 5
  return Array.from({ length: width }, (_, i) => rows.map((r) => r[i]))
}
