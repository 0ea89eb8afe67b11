/** A one-line progress bar on stderr, drawn only when stderr is a TTY (the CLI decides). */
export class Progress {
  readonly #label: string;
  #last = 0;
  readonly #tty = process.stderr.isTTY === true;

  constructor(label: string) { this.#label = label; }

  update(done: number, total: number, extra = ''): void {
    if (!this.#tty) return;
    const now = Date.now();
    if (now - this.#last < 100 && done < total) return;
    this.#last = now;
    const width = 30;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const fill = Math.round(frac * width);
    process.stderr.write(`\r${this.#label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${extra}\x1b[K`);
  }

  done(): void {
    if (this.#tty) process.stderr.write('\r\x1b[K');
  }
}
