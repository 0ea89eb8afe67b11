/**
 * Reference rates from the labels alone: what a classifier that ignores the email gets. An adapter
 * that does not beat them has learnt nothing about the mail.
 * - always-majority: predict the majority label of the pooled training data (every client's train split);
 * - per-client majority: each client predicts its own training majority on its own eval split.
 * Accuracy and macro-F1 are computed as the evaluator does (shared/train/eval.ts); loss has no meaning here.
 */
import { macroF1 } from '../../shared/train/eval.js';
import type { EvalMetrics, ReferenceRates } from '../report/types.js';
import { meanMetrics } from '../report/stats.js';

/** The most frequent label; ties go to the label that sorts first (deterministic). Null when empty. */
export function majorityLabel(labels: readonly string[]): string | null {
  const counts = new Map<string, number>();
  for (const l of labels) counts.set(l, (counts.get(l) ?? 0) + 1);
  let best: string | null = null;
  let bestN = -1;
  for (const l of [...counts.keys()].sort()) {
    const n = counts.get(l)!;
    if (n > bestN) { best = l; bestN = n; }
  }
  return best;
}

/** Accuracy and macro-F1 of always answering `label` on `truth` (classes: `classes`, the label set of the task). */
export function constantRate(truth: readonly string[], label: string, classes: readonly string[]): EvalMetrics {
  if (truth.length === 0) return { loss: null, accuracy: null, f1: null, n: 0 };
  const idx = new Map(classes.map((c, i) => [c, i]));
  const t = truth.map((l) => idx.get(l) ?? -1);
  const p = idx.get(label) ?? -2;
  const acc = truth.filter((l) => l === label).length / truth.length;
  return { loss: null, accuracy: acc, f1: macroF1(t, truth.map(() => p), classes.length), n: truth.length };
}

export interface LabelSets {
  /** Per client: the labels of its train split. */
  train: readonly (readonly string[])[];
  /** Per client: the labels of its eval split. */
  eval: readonly (readonly string[])[];
  /** The pooled test set's labels (absent or empty without one). */
  test?: readonly string[];
}

export function referenceRates(d: LabelSets): ReferenceRates {
  if (d.train.length !== d.eval.length) throw new RangeError(`referenceRates: ${d.train.length} train splits but ${d.eval.length} eval splits`);
  const classes = [...new Set([...d.train.flat(), ...d.eval.flat(), ...(d.test ?? [])])].sort();
  const pooled = majorityLabel(d.train.flat()) ?? classes[0] ?? '';
  const perClient = d.eval.map((ev, i) => (ev.length ? constantRate(ev, majorityLabel(d.train[i]!) ?? pooled, classes) : undefined));
  const always = d.eval.map((ev) => (ev.length ? constantRate(ev, pooled, classes) : undefined));
  const strip = (m: EvalMetrics): EvalMetrics => ({ ...m, loss: null });
  return {
    alwaysMajority: {
      label: pooled,
      ...(d.test && d.test.length ? { test: constantRate(d.test, pooled, classes) } : {}),
      clients: strip(meanMetrics(always)),
    },
    perClientMajority: { clients: strip(meanMetrics(perClient)) },
  };
}
