// Copies the build (dist/, from `npm run build`) into bridge/static/, where the
// bridge serves it under /bridge/ and the Python package ships it.
import { copyFileSync } from "node:fs";
import path from "node:path";
import { FILES, PACKAGE, STATIC } from "./static.mjs";

for (const name of FILES) {
  copyFileSync(path.join(PACKAGE, "dist", name), path.join(STATIC, name));
  console.log(`bridge/static/${name}`);
}
