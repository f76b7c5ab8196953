// The package's build as the bridge serves it: which files of dist/ are copied
// into bridge/static/ (bridge/app.py, STATIC_FILES) and how they are built.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const PACKAGE = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const STATIC = path.resolve(PACKAGE, "../../bridge/static");
export const FILES = ["client.js", "client.d.ts", "use-connection-manager.js", "use-connection-manager.d.ts", "admin.js"];

// tsc -p tsconfig.json, into outDir (default: dist/); throws on a compile error.
export function build(outDir) {
  const tsc = path.join(PACKAGE, "node_modules", ".bin", "tsc");
  const args = ["-p", path.join(PACKAGE, "tsconfig.json"), ...(outDir ? ["--outDir", outDir] : [])];
  const r = spawnSync(tsc, args, { stdio: "inherit" });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`tsc failed (exit ${r.status})`);
}
