// Fails when bridge/static/ is stale against src/: builds into a temporary
// directory and compares each served file with the fresh build.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { FILES, STATIC, build } from "./static.mjs";

const out = mkdtempSync(path.join(tmpdir(), "bridge-client-"));
try {
  build(out);
  const stale = FILES.filter((name) => {
    let served;
    try { served = readFileSync(path.join(STATIC, name), "utf8"); } catch { return true; }
    return served !== readFileSync(path.join(out, name), "utf8");
  });
  for (const name of stale) console.error(`bridge/static/${name} is stale against clients/js/src: run make js`);
  if (stale.length) process.exitCode = 1;
  else console.log(`bridge/static is up to date (${FILES.length} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
