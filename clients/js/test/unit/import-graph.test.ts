// The modules of src/ import each other without a cycle, type-only imports
// included: each module owns one layer (types, then the connection, the
// requests, the subscriptions, then the client), and a cycle would mean two of
// them own each other. The imports are read with TypeScript's own pre-parser,
// so this needs no tool beyond the compiler the build already uses.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { expect, it } from 'vitest';

const srcDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src');

/** Each module of src/ (by file name) and the modules of src/ it imports or re-exports from. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of readdirSync(srcDir).filter((name) => name.endsWith('.ts'))) {
    const { importedFiles } = ts.preProcessFile(readFileSync(path.join(srcDir, file), 'utf8'), true, false);
    graph.set(
      file,
      importedFiles.map(({ fileName }) => fileName).filter((name) => name.startsWith('./')).map((name) => `${name.slice(2)}.ts`),
    );
  }
  return graph;
}

/** The first cycle found, as the list of modules around it, or undefined. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const done = new Set<string>();
  const onPath: string[] = [];
  const visit = (file: string): string[] | undefined => {
    const at = onPath.indexOf(file);
    if (at >= 0) return [...onPath.slice(at), file];
    if (done.has(file)) return undefined;
    onPath.push(file);
    for (const next of graph.get(file) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    onPath.pop();
    done.add(file);
    return undefined;
  };
  for (const file of graph.keys()) {
    const cycle = visit(file);
    if (cycle) return cycle;
  }
  return undefined;
}

it('src/ has no import cycle', () => {
  const graph = importGraph();
  // Every relative import names a module that exists, so no edge is silently dropped.
  for (const [file, imports] of graph) {
    for (const imported of imports) expect(graph.has(imported), `${file} imports ${imported}`).toBe(true);
  }
  expect(graph.get('client.ts')).toContain('connection.ts');
  expect(findCycle(graph)?.join(' → ')).toBeUndefined();
});

it('finds a cycle where there is one', () => {
  const graph = new Map([
    ['a.ts', ['b.ts']],
    ['b.ts', ['c.ts']],
    ['c.ts', ['a.ts']],
  ]);
  expect(findCycle(graph)).toEqual(['a.ts', 'b.ts', 'c.ts', 'a.ts']);
});
