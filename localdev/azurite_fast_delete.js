// Node preload for Azurite, used by the benchmark only (scripts/bench.py; opt out: --stock-azurite).
//
// Why: Azurite deletes a blob with LokiJS `Collection.findAndRemove`, which goes through
// `Resultset.remove` -> `removeBatchByPositions`. With binary indices defined (Azurite's blob
// table has four), that path re-sorts every index of the table on every call: one Delete Blob
// costs O(n log n) in the number of blobs stored (~2-3 ms of Azurite's single thread at 1,000-2,000
// blobs, ~28 ms at 10,000). Real Blob Storage has no such cost, and on a 2-core machine it made
// Azurite, not the app, the limit of every concurrent claim measurement, while the one-by-one
// baseline (latency-bound) did not feel it. Upstream: techfort/LokiJS#773 (closed, wontfix),
// Azure/Azurite#719.
//
// What: when the query matches exactly one document (a blob without snapshots, i.e. every delete
// the app sends), remove it with `Collection.remove(doc)`, LokiJS' own single-document path that
// updates the binary indices in place (O(n)); Azurite itself uses that path for its other
// removals. Any other match count goes through the original code. Results are identical: the
// same documents are removed, the same events are emitted, the indices stay consistent.
"use strict";
const fs = require("fs");
const path = require("path");

// Resolve LokiJS from Azurite's own entry point (process.argv[1], e.g. node_modules/.bin/
// azurite-blob), so the patched module is the very instance Azurite loads.
const azuriteMain = fs.realpathSync(process.argv[1]);
const loki = require(require.resolve("lokijs", { paths: [path.dirname(azuriteMain)] }));
const Collection = loki.Collection;
const findAndRemove = Collection.prototype.findAndRemove;

Collection.prototype.findAndRemove = function (filterObject) {
  const docs = this.find(filterObject);
  if (docs.length === 1) {
    this.remove(docs[0]);
    return;
  }
  findAndRemove.call(this, filterObject);
};

console.log(`azurite_fast_delete: LokiJS findAndRemove patched (${path.dirname(require.resolve("lokijs", { paths: [path.dirname(azuriteMain)] }))})`);
