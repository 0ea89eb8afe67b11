#!/usr/bin/env bash
# The package as a user gets it: `npm pack` (prepack builds dist/), install the tarball into an empty
# folder (npm registry only; a plain install, as a user does it: optional dependencies included,
# since native packages such as @resvg/resvg-js ship their binaries as optional dependencies), then run the installed CLI from there: --version, simulate --scenario tiny-ci, coordinator --help.
# Prints the tarball's size and file count and the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { printf '[pack-smoke] %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }
# t CMD…: runs CMD with its output kept in $work/step.log (shown when it fails), then prints its time
t() {
  local s=$SECONDS rc=0
  "$@" > "$work/step.log" 2>&1 || rc=$?
  [ $rc -eq 0 ] || tail -40 "$work/step.log"
  say "  ($((SECONDS - s)) s, rc $rc)"
  return $rc
}

version=$(node -p "require('./package.json').version")

say "npm pack"
t npm pack --silent --pack-destination "$work" || fail "npm pack"
tgz=$(ls "$work"/fedlora-*.tgz)
files=$(tar -tzf "$tgz")
say "tarball $(basename "$tgz"): $(stat -c %s "$tgz") bytes, $(printf '%s\n' "$files" | grep -vc '/$') files"
# only the build, the run-time assets and the README: no tests, CI, benches or TypeScript sources
stray=$(printf '%s\n' "$files" | grep -E '^package/(test|bench|\.ci|docs)/|^package/[^/]+\.ts$|\.ts$' | grep -v '\.d\.ts$' || true)
[ -z "$stray" ] || fail "tarball ships files it should not: $(printf '%s\n' "$stray" | head -5 | tr '\n' ' ')"
for need in package/dist/bin/fedlora.js package/dist/simulations/runner/worker.js package/dist/shared/backend/tfjs-gradients.js \
  package/simulations/scenarios/tiny-ci.json package/simulations/models/spam-llama/model.safetensors package/README.md; do
  printf '%s\n' "$files" | grep -qx "$need" || fail "tarball lacks $need"
done

app="$work/app"
mkdir "$app"
printf '{ "name": "fedlora-pack-smoke", "version": "0.0.0", "private": true }\n' > "$app/package.json"
say "npm install <tarball> into an empty folder"
(cd "$app" && t npm install --no-audit --no-fund --prefer-offline "$tgz") || fail "npm install of the tarball"
[ ! -e "$app/node_modules/tsx" ] || fail "tsx was installed with the package (it is a devDependency)"
[ ! -e "$app/node_modules/@tensorflow/tfjs" ] || fail "the @tensorflow/tfjs union was installed"
say "installed node_modules: $(du -sm "$app/node_modules" | cut -f1) MB"

cd "$app"   # from here on nothing may resolve against the clone
got=$(npx --no-install fedlora --version)
[ "$got" = "$version" ] || fail "fedlora --version printed '$got', package.json says $version"
say "fedlora --version: $got"

say "fedlora simulate --scenario tiny-ci"
out="$work/sim"
t npx --no-install fedlora simulate --scenario tiny-ci --out "$out" || fail "simulate tiny-ci exited non-zero"
grep -E '^(wall time|report:)' "$work/step.log" | head -2
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const bad = (m) => { console.error("[pack-smoke] FAIL: report.json " + m); process.exit(1); };
  if (r.versions?.fedlora !== process.argv[2]) bad(`versions.fedlora is ${r.versions?.fedlora}, expected ${process.argv[2]}`);
  if (r.scenario?.name !== "tiny-ci") bad(`scenario.name is ${r.scenario?.name}`);
  if (!String(r.model?.name ?? "").includes("node_modules/fedlora/simulations/models/spam-llama")) bad(`model ${r.model?.name} is not the installed package\x27s bundled model`);
  if (!(r.model?.parameters > 0)) bad("has no model parameter count");
' "$out/report.json" "$version" || fail "report.json check"
for f in report.json report.html report.png; do [ -s "$out/$f" ] || fail "simulate wrote no $f"; done
say "report.json valid ($(stat -c %s "$out/report.json") bytes)"

# the library entry (README "Library") from the installed package
node --input-type=module -e "const m = await import('fedlora'); for (const f of ['loadCausalLM', 'loadPeftAdapter', 'savePeftAdapter']) if (typeof m[f] !== 'function') { console.error('export ' + f + ' missing'); process.exit(1); }" \
  || fail "import('fedlora') does not export the README's library functions"
say "import('fedlora'): ok"

help=$(npx --no-install fedlora coordinator --help)
printf '%s\n' "$help" | grep -q -- '--model' || fail "coordinator --help does not list --model"
say "fedlora coordinator --help: ok"
cd "$repo"
say "ok"
