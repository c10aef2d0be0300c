// The declarations: index.d.ts is what scripts/build-types.mjs makes of index.js now, and
// index.js (checkJs, strict) and the typed usage example in examples/ type-check.
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const run = (args) => execFileSync(process.execPath, args, { cwd: root, stdio: "pipe" });

test("index.d.ts is up to date with index.js", () => {
  run([join(root, "scripts", "build-types.mjs"), "--check"]);
});

test("tsc --noEmit: the SDK's JSDoc types and the usage example check", () => {
  run([join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.json")]);
});
