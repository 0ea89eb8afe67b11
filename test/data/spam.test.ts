import { expect } from 'chai';
import { loadSpamCorpus, splitSpamCorpus, toSpamExample, parseEmail, SPAM_GROUPS } from '../../simulations/data/spam.js';
import { encodeExamples } from '../../shared/data/jsonl.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';

describe('SpamAssassin corpus', function () {
  this.timeout(20_000);

  it('loads every group, labelled, cleaned and de-duplicated', () => {
    const t0 = performance.now();
    const c = loadSpamCorpus();
    // a figure, not an assertion: timing depends on the machine's load
    console.log(`      corpus load: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(c.length).to.be.within(5800, 6046);
    const byGroup = new Map<string, number>();
    for (const e of c) byGroup.set(e.group, (byGroup.get(e.group) ?? 0) + 1);
    expect([...byGroup.keys()].sort()).to.deep.equal([...SPAM_GROUPS].sort());
    expect(byGroup.get('easy-ham-1')).to.be.within(2400, 2500);
    expect(byGroup.get('spam-2')).to.be.within(1250, 1396);
    for (const e of c) {
      expect(e.label).to.equal(e.group.startsWith('spam') ? 'spam' : 'ham');
      expect(e.text.startsWith(`Subject: ${e.subject}\n`)).to.equal(true);
      expect(e.body.length).to.be.at.most(2000);
    }
    expect(new Set(c.map((e) => e.id)).size).to.equal(c.length);
    expect(new Set(c.map((e) => e.text)).size).to.equal(c.length);
    // No markup, raw MIME or undecoded transfer encodings left in bodies.
    const markup = c.filter((e) => /<\/?(html|body|table|td|font)\b|Content-Transfer-Encoding:|^--=_/im.test(e.body)).length;
    expect(markup / c.length).to.be.lessThan(0.01);
    expect(c.filter((e) => e.body.trim() === '').length / c.length).to.be.lessThan(0.01);
    // Cached: a second call is the same frozen array.
    expect(loadSpamCorpus()).to.equal(c);
    expect(Object.isFrozen(c[0])).to.equal(true);
  });

  it('parses MIME: multipart prefers text/plain, decodes base64/QP/encoded words, strips HTML', () => {
    const raw = [
      'From someone Mon Jan 1',
      'Subject: =?utf-8?B?SGVsbG8gd8O2cmxk?= offer',
      'From: "Bob" <bob@example.com>',
      'Content-Type: multipart/alternative;',
      '\tboundary="XX"',
      '',
      'preamble',
      '--XX',
      'Content-Type: text/html',
      '',
      '<html><body><p>HTML&nbsp;only</p></body></html>',
      '--XX',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: quoted-printable',
      '',
      'Caf=C3=A9 is =',
      'open   now',
      '--XX--',
    ].join('\n');
    const e = parseEmail(raw);
    expect(e.subject).to.equal('Hello wörld offer');
    expect(e.from).to.equal('"Bob" <bob@example.com>');
    expect(e.body).to.equal('Café is open now');
    const html = parseEmail('Subject: x\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n' + Buffer.from('<style>p{}</style><b>Win</b> &amp; <i>cash</i>&#33;').toString('base64'));
    expect(html.body).to.equal('Win & cash!');
  });

  it('splits pretrain/federated disjointly, stratified, deterministically', () => {
    const c = loadSpamCorpus();
    const s = splitSpamCorpus(c, { pretrainFraction: 0.2, seed: 1 });
    expect(s.pretrain.length + s.federated.length).to.equal(c.length);
    const fed = new Set(s.federated.map((e) => e.id));
    expect(s.pretrain.some((e) => fed.has(e.id))).to.equal(false);
    const fedTexts = new Set(s.federated.map((e) => e.text));
    expect(s.pretrain.some((e) => fedTexts.has(e.text))).to.equal(false);
    for (const g of SPAM_GROUPS) {
      const all = c.filter((e) => e.group === g).length;
      expect(s.pretrain.filter((e) => e.group === g).length).to.equal(Math.round(0.2 * all));
    }
    expect(splitSpamCorpus(c, { seed: 1 }).pretrain.map((e) => e.id)).to.deep.equal(s.pretrain.map((e) => e.id));
    expect(splitSpamCorpus(c, { seed: 2 }).pretrain.map((e) => e.id)).to.not.deep.equal(s.pretrain.map((e) => e.id));
  });

  it('formats prompt/completion examples that survive byte-level truncation', () => {
    const c = loadSpamCorpus();
    const spam = c.find((e) => e.label === 'spam')!;
    const ex = toSpamExample(spam, { maxChars: 200 });
    expect(ex.completion).to.equal(' spam');
    expect(ex.prompt.endsWith('\nLabel:')).to.equal(true);
    expect(ex.prompt.length).to.be.at.most(200 + '\nLabel:'.length);
    const tok = new ByteTokenizer();
    const [enc] = encodeExamples([ex], tok, 64);
    expect(enc!.ids).to.have.length(64);
    expect(tok.decode(enc!.ids).endsWith('\nLabel: spam')).to.equal(true);
    expect(toSpamExample(c.find((e) => e.label === 'ham')!).completion).to.equal(' ham');
  });
});
