// Node preload for Azurite, used by the benchmark only (python -m scripts.bench; opt out: --stock-azurite).
//
// Why: stock Azurite's Delete Blob costs CPU in proportion to the blobs it stores, twice over:
// 1. it removes the row with LokiJS `Collection.findAndRemove`, which goes through
//    `Resultset.remove` -> `removeBatchByPositions`; with binary indices defined (Azurite's blob
//    table has four) that path re-sorts every index of the table on every call: O(n log n) in
//    all blobs stored (~2.5 ms of Azurite's single thread at 1,000-2,000 blobs, ~28 ms at 10,000;
//    upstream: techfort/LokiJS#773, closed wontfix);
// 2. it looks the row up twice (`count`, then `findAndRemove`) with a query object whose first
//    key is `accountName`: LokiJS filters an implicit $and in key order and uses a binary index
//    for the first filter only, so both lookups scan every blob of the account (~6-14 ms per
//    delete at 10,000 blobs). Its point reads (`findOne({name, ...})`) put `name` first and are
//    fast. See also Azure/Azurite#719.
// Real Blob Storage has none of this. On a 2-core machine it made the emulator, not the app, the
// limit of every concurrent claim measurement, while the latency-bound one-by-one baseline did
// not feel it, and it made a 10,000-file tick superlinear for reasons that are not the app's.
//
// What, without changing any result:
// - `count` and `findAndRemove` with an exact string `name` filter by `name` first (a
//   conjunction is order-free; both calls are insensitive to row order);
// - when exactly one row matches (a blob without snapshots: every delete the app sends),
//   `findAndRemove` removes it with `Collection.remove(doc)`, LokiJS' own single-row path that
//   updates the indices in place (O(n) memmove instead of a re-sort); Azurite itself uses that
//   path for its other removals. Any other match count goes through the original code.
// tests/test_bench.py runs one delete script against stock Azurite and with this preload and
// expects the same answers.
"use strict";
const fs = require("fs");
const path = require("path");

// Resolve LokiJS from Azurite's own entry point (process.argv[1], e.g. node_modules/.bin/
// azurite-blob), so the patched module is the very instance Azurite loads.
const azuriteMain = fs.realpathSync(process.argv[1]);
const lokiPath = require.resolve("lokijs", { paths: [path.dirname(azuriteMain)] });
const Collection = require(lokiPath).Collection;
const count = Collection.prototype.count;
const findAndRemove = Collection.prototype.findAndRemove;

// The same implicit-$and query with an exact `name` as its first key (or the query unchanged).
function nameFirst(query) {
  if (!query || typeof query !== "object" || typeof query.name !== "string") return query;
  const keys = Object.keys(query);
  if (keys.length < 2 || keys[0] === "name" || keys.some((k) => k.startsWith("$"))) return query;
  const reordered = { name: query.name };
  for (const k of keys) if (k !== "name") reordered[k] = query[k];
  return reordered;
}

Collection.prototype.count = function (query) {
  return count.call(this, nameFirst(query));
};

Collection.prototype.findAndRemove = function (filterObject) {
  const query = nameFirst(filterObject);
  const docs = this.find(query);
  if (docs.length === 1) {
    this.remove(docs[0]);
    return;
  }
  findAndRemove.call(this, query);
};

console.log(`azurite_fast_delete: LokiJS findAndRemove patched (${path.dirname(lokiPath)})`);
