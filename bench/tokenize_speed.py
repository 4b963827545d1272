"Tokenizer throughput on a corpus: prints one JSON line (docs, tokens, tokens/s, docs/s, peak RSS, config)."

import argparse
import json
import os
import resource
import time
from pathlib import Path

from ulmfit.tokenize import SpacyTokenizer, TokenTable, encode_texts


def docs_of(path):
    "Texts of a corpus path: IMDB archive/folder, WikiText file, table, or plain text."
    from ulmfit.datasets import ImdbReader, TableReader, TextCorpusReader, WikiTextReader

    p = str(path)
    if 'imdb' in Path(p).name and (p.endswith(('.tgz', '.tar.gz')) or Path(p).is_dir()):
        r = ImdbReader(p)
    elif '.raw' in p or '.tokens' in p:
        r = WikiTextReader(p)
    elif p.endswith(('.csv', '.tsv', '.parquet')):
        r = TableReader(p)
    else:
        r = TextCorpusReader(p)
    return (d.text for d in r)


def cpu_s():
    "CPU seconds (user + system) of this process and its finished children."
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main_cpu_s():
    "CPU seconds of this process alone (reading the corpus, merging the workers' id tables)."
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def peak_rss_mb():
    "Peak RSS of this process plus the largest finished worker (ru_maxrss is in KiB on Linux)."
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((me + kids) / 1024, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--corpus', required=True, help='IMDB .tgz/folder, WikiText file, CSV, or text corpus')
    ap.add_argument('--workers', type=int, default=None, help='worker processes (default: all cores)')
    ap.add_argument('--max-docs', type=int, default=None, help='stop after this many documents')
    ap.add_argument('--chunk', type=int, default=256, help='documents per task sent to a worker')
    ap.add_argument(
        '--reference-docs',
        type=int,
        default=0,
        help='also time plain spaCy+rules (one process) on the first N docs and check identity',
    )
    a = ap.parse_args(argv)
    tok = SpacyTokenizer()
    texts = docs_of(a.corpus)
    if a.max_docs:
        texts = (t for i, t in zip(range(a.max_docs), texts))
    table, docs, tokens = TokenTable(), 0, 0
    t0, c0, m0 = time.perf_counter(), cpu_s(), main_cpu_s()
    for ids, lens in encode_texts(texts, tok, a.workers, a.chunk, table):
        docs += len(lens)
        tokens += len(ids)
    dt, cpu, main_cpu = time.perf_counter() - t0, cpu_s() - c0, main_cpu_s() - m0
    res = dict(
        docs=docs,
        tokens=tokens,
        seconds=round(dt, 2),
        tokens_per_s=round(tokens / dt),
        docs_per_s=round(docs / dt),
        cpu_s=round(cpu, 1),
        main_cpu_s=round(main_cpu, 1),
        tokens_per_cpu_s=round(tokens / cpu),
        load_avg_1m=os.getloadavg()[0],
        distinct_tokens=len(table.itos),
        peak_rss_mb=peak_rss_mb(),
        config=dict(
            corpus=a.corpus,
            workers=a.workers or os.cpu_count(),
            chunk=a.chunk,
            max_docs=a.max_docs,
            tokenizer=tok.config(),
            cpu_count=os.cpu_count(),
        ),
    )
    if a.reference_docs:
        sub = [t for _, t in zip(range(a.reference_docs), docs_of(a.corpus))]
        ref_tok = SpacyTokenizer()
        t0 = time.process_time()
        ref = [ref_tok.reference(t) for t in sub]
        rdt = time.process_time() - t0
        fast_tok = SpacyTokenizer()
        t0 = time.process_time()
        fast = [fast_tok(t) for t in sub]
        fdt = time.process_time() - t0
        n = sum(map(len, ref))
        # CPU-time rates: comparable with tokens_per_cpu_s above even when other jobs share the cores
        res['reference'] = dict(
            docs=len(sub),
            tokens=n,
            plain_spacy_tokens_per_cpu_s=round(n / rdt),
            memo_cold_tokens_per_cpu_s=round(n / fdt),
            identical=sum(a == b for a, b in zip(ref, fast)) == len(sub),
        )
    print(json.dumps(res))


if __name__ == '__main__':
    main()
