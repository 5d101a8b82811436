// Line-protocol worker for `pixdex bench compare-compress`: one JSON request per stdin line, one JSON reply
// per stdout line. Runs sharp on one thread so that it is compared per core with pixdex.
//   {"op": "encode", "input": PATH, "sizes": [[w, h], ...], "quality": [q, ...], "effort": E, "out": [PATH, ...]}
//     -> {"bytes": [n, ...]}   decode PATH once per size, resize to exactly w x h, WebP at quality q, write out
//   {"op": "time", "input": PATH, "sizes": [[w, h], ...], "quality": [q, ...], "effort": E, "repeat": R}
//     -> {"ms": [t, ...]}       R timed runs of: read the file's bytes into memory once, then per run decode +
//                               every size + encode, all in memory (the work the compress function does)
import { readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import sharp from "sharp";

sharp.concurrency(1);
sharp.cache(false);
sharp.simd(true);

async function derive(input, [w, h], quality, effort) {
  return sharp(input, { failOn: "error", limitInputPixels: 100_000_000 })
    .rotate()
    .resize(w, h, { fit: "fill", kernel: "lanczos3" })
    .webp({ quality, effort })
    .toBuffer();
}

async function handle(req) {
  if (req.op === "version") return { sharp: sharp.versions.sharp, vips: sharp.versions.vips };
  const input = readFileSync(req.input);
  if (req.op === "encode") {
    const bytes = [];
    for (let i = 0; i < req.sizes.length; i++) {
      const out = await derive(input, req.sizes[i], req.quality[i], req.effort);
      writeFileSync(req.out[i], out);
      bytes.push(out.length);
    }
    return { bytes };
  }
  if (req.op === "time") {
    const ms = [];
    for (let r = 0; r < req.repeat; r++) {
      const t = process.hrtime.bigint();
      for (let i = 0; i < req.sizes.length; i++) await derive(input, req.sizes[i], req.quality[i], req.effort);
      ms.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    return { ms };
  }
  throw new Error(`unknown op ${req.op}`);
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    process.stdout.write(JSON.stringify(await handle(JSON.parse(line))) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err && err.message ? err.message : err) }) + "\n");
  }
}
