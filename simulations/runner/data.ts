/**
 * Deals a scenario's dataset out to simulated clients and writes each client's private files:
 * `<out>/clients/<id>/train.jsonl` and `eval.jsonl`, plus the pooled test set `<out>/test.jsonl`
 * when the scenario has one. Pure function of (scenario, seed): the same seed gives the same
 * partition, ranks and files; the test set does not depend on the seed at all.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from '../../shared/errors.js';
import { Rng } from '../../shared/data/random.js';
import { isPromptCompletion, loadJsonlDataset, type Example } from '../../shared/data/jsonl.js';
import { atomicWrite } from '../../shared/model/safetensors.js';
import { loadSpamCorpus, splitSpamCorpus, toSpamExample } from '../data/spam.js';
import { partitionDirichlet, partitionIid, splitClients } from '../partition.js';
import { CORPUS_SPLIT_SEED } from '../pretrain.js';
import { assignRanks, type Scenario } from '../scenario.js';

export interface SimClient {
  id: string;
  index: number;
  rank: number;
  dir: string;
  trainFile: string;
  evalFile: string;
  train: Example[];
  eval: Example[];
  /** Label histogram over train + eval. */
  labelCounts: Record<string, number>;
  /** Source mailbox histogram (spam dataset only). */
  groupCounts?: Record<string, number>;
  /** Labels of the train and eval splits, in file order (reference rates). */
  trainLabels: string[];
  evalLabels: string[];
}

/** The pooled test set: held out of the corpus before the subsample and the partition. */
export interface TestSet {
  file: string;
  examples: Example[];
  labels: string[];
  labelCounts: Record<string, number>;
}

/** The test set's draw does not follow the scenario's seed: every seed, run and baseline sees the same emails. */
export const TEST_SET_SEED = 'fedlora-test-set-v1';

interface Item { ex: Example; label: string; group: string }

export function labelOf(e: Example): string {
  return isPromptCompletion(e) ? e.completion.trim() : '';
}

/**
 * The pool, with repeated inputs removed (first kept): the corpus has duplicate mails, and cut to
 * the model's window many more read the same, so one could sit in a train split and in an eval or
 * test split and inflate the figures.
 */
async function pooledItems(s: Scenario): Promise<Item[]> {
  const seen = new Set<string>();
  return (await rawItems(s)).filter((it) => {
    const key = isPromptCompletion(it.ex) ? it.ex.prompt : JSON.stringify(it.ex);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

async function rawItems(s: Scenario): Promise<Item[]> {
  if (s.dataset === 'spam') {
    // the pretraining slice is held back: client data is disjoint from what the base model saw
    const { federated } = splitSpamCorpus(loadSpamCorpus(), { pretrainFraction: 0.2, seed: CORPUS_SPLIT_SEED });
    // the head of the mail (subject, first lines) must fit the model's window: byte-level tokens, so
    // cap the characters a little under maxSeqLen (tail-truncation would keep only footers)
    const maxChars = Math.max(32, s.train.maxSeqLen - 16);
    return federated.map((e) => ({ ex: toSpamExample(e, { maxChars }), label: e.label, group: e.group }));
  }
  const examples = await loadJsonlDataset(s.dataset);
  return examples.map((ex) => ({ ex, label: labelOf(ex), group: labelOf(ex) }));
}

/**
 * Holds `n` items out of the pool with a fixed seed, keeping each (group, label) stratum's share
 * (largest remainder); returns the held-out items and the rest in their original order.
 */
export function holdOut<T extends { group: string; label: string }>(items: readonly T[], n: number, seed: string = TEST_SET_SEED): { test: T[]; rest: T[] } {
  if (n <= 0) return { test: [], rest: [...items] };
  if (n >= items.length) throw new ConfigError(`scenario field "testSet": ${n} test examples leave nothing to train on (the pool has ${items.length})`);
  const rng = new Rng(`testset:${seed}`);
  const strata = new Map<string, number[]>();
  items.forEach((it, i) => { const k = `${it.group}\u0000${it.label}`; const g = strata.get(k) ?? []; g.push(i); strata.set(k, g); });
  const keys = [...strata.keys()].sort();
  const quotas = keys.map((k) => (strata.get(k)!.length * n) / items.length);
  const take = quotas.map(Math.floor);
  let left = n - take.reduce((a, b) => a + b, 0);
  for (const [, i] of quotas.map((q, i) => [q - Math.floor(q), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1])) { if (left-- <= 0) break; take[i] = take[i]! + 1; }
  const chosen = new Set<number>();
  keys.forEach((k, i) => { for (const idx of rng.shuffle(strata.get(k)!).slice(0, take[i]!)) chosen.add(idx); });
  return { test: rng.shuffle(items.filter((_, i) => chosen.has(i))), rest: items.filter((_, i) => !chosen.has(i)) };
}

/** Seeded subsample keeping each group's share. */
function subsample(items: Item[], max: number, seed: number): Item[] {
  if (max <= 0 || items.length <= max) return items;
  const rng = new Rng(`subsample:${seed}`);
  const groups = new Map<string, Item[]>();
  for (const it of items) { const g = groups.get(it.group) ?? []; g.push(it); groups.set(it.group, g); }
  const out: Item[] = [];
  for (const key of [...groups.keys()].sort()) {
    const g = groups.get(key)!;
    out.push(...rng.shuffle(g).slice(0, Math.max(1, Math.round((g.length * max) / items.length))));
  }
  return rng.shuffle(out).slice(0, max);
}

function histogram(xs: string[]): Record<string, number> {
  const h: Record<string, number> = {};
  for (const x of [...xs].sort()) h[x] = (h[x] ?? 0) + 1;
  return h;
}

export function clientId(i: number): string {
  return `c${String(i + 1).padStart(2, '0')}`;
}

/** Partitions the dataset, assigns ranks and writes every client's files under `<outDir>/clients`. */
export async function prepareClients(s: Scenario, outDir: string): Promise<SimClient[]> {
  return (await prepareData(s, outDir)).clients;
}

/** The pooled test set (if the scenario has one), then the clients' files, from one scenario. */
export async function prepareData(s: Scenario, outDir: string): Promise<{ clients: SimClient[]; test: TestSet | null }> {
  const { test: held, rest } = holdOut(await pooledItems(s), s.testSet);
  let test: TestSet | null = null;
  if (held.length) {
    const file = join(outDir, 'test.jsonl');
    await mkdir(outDir, { recursive: true });
    await atomicWrite(file, held.map((it) => JSON.stringify(it.ex)).join('\n') + '\n');
    const labels = held.map((it) => it.label);
    test = { file, examples: held.map((it) => it.ex), labels, labelCounts: histogram(labels.map((l) => l || 'text')) };
  }
  const items = subsample(rest, s.maxExamples, s.seed);
  if (items.length < s.clients * 4) throw new ConfigError(`scenario field "clients": ${s.clients} clients need at least ${s.clients * 4} examples, the dataset has ${items.length}`);
  let parts: Item[][];
  if (s.partition.kind === 'dirichlet') {
    if (items.every((it) => it.group === '')) throw new ConfigError('scenario field "partition": dirichlet needs labelled {"prompt","completion"} examples; use "iid" for plain text');
    // non-IID over the mailbox source (spam) or the label (JSONL)
    parts = partitionDirichlet(items, (it) => it.group, s.clients, s.partition.alpha, s.seed, { minPerClient: s.partition.minPerClient ?? 4 });
  } else {
    parts = partitionIid(items, s.clients, s.seed);
  }
  const splits = splitClients(parts, s.evalFraction, s.seed, (it) => it.label);
  const ranks = assignRanks(s.rankMix, s.clients, s.seed);
  const out: SimClient[] = [];
  for (let i = 0; i < s.clients; i++) {
    const id = clientId(i);
    const dir = join(outDir, 'clients', id);
    await mkdir(dir, { recursive: true });
    const sp = splits[i]!;
    // sp.train is already a seeded shuffle: its head is a random subset with the split's label mix in expectation
    const trItems = s.maxTrainPerClient > 0 ? sp.train.slice(0, s.maxTrainPerClient) : sp.train;
    const train = trItems.map((it) => it.ex);
    const evItems = sp.eval.slice(0, s.maxEvalPerClient);
    const ev = evItems.map((it) => it.ex);
    const trainFile = join(dir, 'train.jsonl');
    const evalFile = join(dir, 'eval.jsonl');
    await atomicWrite(trainFile, train.map((e) => JSON.stringify(e)).join('\n') + '\n');
    await atomicWrite(evalFile, ev.map((e) => JSON.stringify(e)).join('\n') + '\n');
    const all = [...trItems, ...evItems];
    out.push({
      id, index: i, rank: ranks[i]!, dir, trainFile, evalFile, train, eval: ev,
      trainLabels: trItems.map((it) => it.label), evalLabels: evItems.map((it) => it.label),
      labelCounts: histogram(all.map((it) => it.label || 'text')),
      ...(s.dataset === 'spam' ? { groupCounts: histogram(all.map((it) => it.group)) } : {}),
    });
  }
  return { clients: out, test };
}
