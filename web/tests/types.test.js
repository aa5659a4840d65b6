// The JSDoc types of huddle.js and the page hold (`tsc --noEmit` over web/tsconfig.json, strict).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { join } from "node:path";
import { REPO } from "./harness.js";

test("huddle.js and app.js type-check (strict)", () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", join(REPO, "web", "tsconfig.json")], { encoding: "utf8" });
  assert.equal(r.status, 0, `tsc:\n${r.stdout}${r.stderr}`);
});
