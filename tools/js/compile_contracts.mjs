// Compiles chain/contracts/*.sol with the pinned npm `solc` (solc-js) and writes
// chain/artifacts/<ContractName>.json: {abi, bytecode, compiler, contractName,
// evmVersion, optimizer, sourceHash, sourceName}, keys sorted, 2-space indent.
//
//   node tools/js/compile_contracts.mjs          write the artifacts
//   node tools/js/compile_contracts.mjs --check  compile in memory; exit 1 if any
//                                               artifact differs, is missing or stale
//
// Deterministic: fixed settings, source unit names relative to the repository
// (never absolute paths), sources fed in sorted order; the metadata hash in the
// bytecode then depends only on the sources and these settings.

import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CONTRACTS = "chain/contracts";
const ARTIFACTS = join(ROOT, "chain", "artifacts");
const NODE_MODULES = join(ROOT, "node_modules");
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function sha256(text) {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

// Imports outside chain/contracts resolve in node_modules (e.g. @openzeppelin/...).
function findImports(path) {
  const file = path.startsWith(`${CONTRACTS}/`) ? join(ROOT, path) : join(NODE_MODULES, path);
  if (!existsSync(file)) return { error: `not found: ${path}` };
  return { contents: readFileSync(file, "utf8") };
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys(value[k])]),
    );
  }
  return value;
}

export function compile() {
  const names = readdirSync(join(ROOT, CONTRACTS))
    .filter((n) => n.endsWith(".sol"))
    .sort();
  const sources = {};
  for (const name of names) {
    sources[`${CONTRACTS}/${name}`] = { content: readFileSync(join(ROOT, CONTRACTS, name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  for (const e of output.errors ?? []) console.error(e.formattedMessage);
  if (errors.length) throw new Error(`solc: ${errors.length} error(s)`);

  const artifacts = new Map();
  for (const sourceName of Object.keys(sources)) {
    for (const [contractName, c] of Object.entries(output.contracts[sourceName] ?? {})) {
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      const artifact = sortKeys({
        contractName,
        sourceName,
        sourceHash: `sha256:${sha256(sources[sourceName].content)}`,
        compiler: solc.version(),
        evmVersion: SETTINGS.evmVersion,
        optimizer: SETTINGS.optimizer,
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
      });
      artifacts.set(`${contractName}.json`, `${JSON.stringify(artifact, null, 2)}\n`);
    }
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  const onDisk = existsSync(ARTIFACTS)
    ? readdirSync(ARTIFACTS).filter((n) => n.endsWith(".json"))
    : [];
  if (!check) {
    for (const [file, text] of artifacts) writeFileSync(join(ARTIFACTS, file), text);
    for (const file of onDisk) {
      if (!artifacts.has(file)) console.error(`stale artifact (no contract): chain/artifacts/${file}`);
    }
    console.log(`wrote ${artifacts.size} artifacts with solc ${solc.version()}`);
    return;
  }
  const problems = [];
  for (const [file, text] of artifacts) {
    const path = join(ARTIFACTS, file);
    if (!existsSync(path)) problems.push(`missing: chain/artifacts/${file}`);
    else if (readFileSync(path, "utf8") !== text) problems.push(`differs: chain/artifacts/${file}`);
  }
  for (const file of onDisk) {
    if (!artifacts.has(file)) problems.push(`stale (no such contract): chain/artifacts/${file}`);
  }
  if (problems.length) {
    for (const p of problems) console.error(p);
    console.error("run: node tools/js/compile_contracts.mjs");
    process.exit(1);
  }
  console.log(`${artifacts.size} artifacts match a fresh compile (solc ${solc.version()})`);
}

main();
