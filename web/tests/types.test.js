// The JSDoc types of huddle.js, every module of web/sdk/ and the page hold (`tsc --noEmit` over web/tsconfig.json, strict).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { REPO } from "./harness.js";

test("huddle.js, its modules in sdk/ and app.js type-check (strict)", () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", join(REPO, "web", "tsconfig.json")], { encoding: "utf8" });
  assert.equal(r.status, 0, `tsc:\n${r.stdout}${r.stderr}`);
});

test("the type check covers huddle.js, app.js and every module of web/sdk/", () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", join(REPO, "web", "tsconfig.json"), "--listFilesOnly"], { encoding: "utf8" });
  assert.equal(r.status, 0, `tsc:\n${r.stdout}${r.stderr}`);
  const listed = new Set(r.stdout.split("\n").map((l) => l.trim()).filter(Boolean));
  const want = ["huddle.js", "app.js", ...readdirSync(join(REPO, "web", "sdk")).map((f) => `sdk/${f}`)];
  assert.ok(want.length > 3, `web/sdk/ lists ${want}`);
  for (const f of want) assert.ok(listed.has(join(REPO, "web", f)), `tsc does not check web/${f}:\n${r.stdout}`);
});
