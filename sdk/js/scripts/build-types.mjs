// Generates index.d.ts from index.js's JSDoc: tsc's declaration output, less the private
// members (tsc writes them untyped, which strict checking of the .d.ts refuses, and they are
// no part of the API). `--check` compares instead of writing, so a stale index.d.ts fails.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.decl.json")], { stdio: "inherit" });
const generated = readFileSync(join(root, "build", "types", "index.d.ts"), "utf8");

const out = [];
const lines = generated.split("\n");
for (let i = 0; i < lines.length; i++) {
  const line = lines[i];
  if (/^\s+(private )?_\w+(: .*)?;$/.test(line)) {
    // Drop the member's doc comment too (already pushed: a block ending right above).
    if (out.length && /\*\/\s*$/.test(out[out.length - 1])) {
      while (out.length && !/^\s*\/\*\*/.test(out[out.length - 1])) out.pop();
      out.pop();
    }
    continue;
  }
  out.push(line);
}
const text = "// Generated from index.js by scripts/build-types.mjs (npm run types); do not edit.\n" + out.join("\n");
const target = join(root, "index.d.ts");
if (process.argv.includes("--check")) {
  if (readFileSync(target, "utf8") !== text) {
    console.error("index.d.ts is stale: run `npm run types` in sdk/js");
    process.exit(1);
  }
} else {
  writeFileSync(target, text);
}
