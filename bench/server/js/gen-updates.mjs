// Writes the Yjs updates of the `bench server` workload, made by yjs itself: one writer
// doc, `count` single-key map sets (keys from a pool of 10,000, integer values), one update
// each. Output: for each update, its length as u32 little-endian, then its bytes.
// Run with: node gen-updates.mjs COUNT OUT
import * as Y from 'yjs'
import { writeFileSync } from 'node:fs'

const count = parseInt(process.argv[2], 10)
const out = process.argv[3]
const doc = new Y.Doc()
const map = doc.getMap('bench')
const updates = []
doc.on('update', u => updates.push(u))
for (let i = 0; i < count; i++) {
  // The same key sequence as Stead's side (bench-server's `key_of`).
  map.set('k' + ((i * 7919) % 10000), i)
}
let size = 0
for (const u of updates) size += 4 + u.length
const buf = Buffer.alloc(size)
let at = 0
for (const u of updates) {
  buf.writeUInt32LE(u.length, at)
  buf.set(u, at + 4)
  at += 4 + u.length
}
writeFileSync(out, buf)
console.log(JSON.stringify({ updates: updates.length, bytes: size - 4 * updates.length }))
