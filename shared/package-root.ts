/**
 * Where fedlora's own files are, wherever it runs from: a clone run through tsx (this file is
 * `<root>/shared/package-root.ts`), the compiled build (`<root>/dist/shared/package-root.js`) or an
 * installed package (`node_modules/fedlora/dist/...`). Assets read at run time (scenario presets,
 * the bundled model, package.json) resolve against this root, never against the working directory.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'fedlora';
let root: string | null = null;
let manifest: { name?: string; version?: string } | null = null;

function readManifest(dir: string): { name?: string; version?: string } | null {
  try {
    return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
  } catch {
    return null;
  }
}

/** Absolute path of the folder holding fedlora's package.json. */
export function packageRoot(): string {
  if (root !== null) return root;
  // walk up from this module: the first package.json named "fedlora" (at most a few levels: source or dist)
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const m = readManifest(dir);
    if (m?.name === PACKAGE_NAME) {
      root = dir;
      manifest = m;
      return dir;
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(`cannot find fedlora's package.json above ${fileURLToPath(import.meta.url)} (a damaged install?)`);
}

/** A path inside the package, e.g. `packagePath('simulations', 'scenarios')`. */
export function packagePath(...parts: string[]): string {
  return resolve(packageRoot(), ...parts);
}

/** The package version from package.json. */
export function packageVersion(): string {
  packageRoot();
  return manifest?.version ?? '0.0.0';
}
