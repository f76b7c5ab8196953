import { defineConfig } from "vite";

export default defineConfig({
  // session-bridge-client is linked (file:../..): its React import must resolve to
  // this app's React, not to a copy next to the package (hooks need one React).
  resolve: { dedupe: ["react", "react-dom"] },
  oxc: { jsx: { runtime: "automatic" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
});
