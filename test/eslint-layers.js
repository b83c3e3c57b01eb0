// The layers of src/, enforced by lint (`npm run lint`, part of `npm test`):
// imports point one way, down. A module may import from its own layer and the
// layers below it, never from a layer above. test/unit/layers.test.ts checks
// that a back-import fails this rule.
//
//   7  cli/ cli.ts daemon/ fleet/      the commands and `bosun run`
//   6  bus/ health/ apply-node.ts       Kafka; health rounds; the engine wired to the phases
//   5  phases/ profiles/               observe -> plan (pure)
//   4  backup/                         the backup format, restore, create, S3 and peer
//   3  engine/                         runs steps; knows no phase
//   2  secrets/ state/                 opening and redacting secrets; the state dir's files
//   1  identity/ spec/                 host keys and sealing; the schemas
//   0  host/ log.ts errors.ts ...      the OS; logging; error types
//
// A module is a folder of src/ or a file at its top (named with .ts).
export const LAYERS = [
  ['host', 'log.ts', 'errors.ts', 'version.ts', 'canonical-json.ts'],
  ['identity', 'spec'],
  ['secrets', 'state'],
  ['engine'],
  ['backup'],
  ['phases', 'profiles'],
  ['bus', 'health', 'apply-node.ts'],
  ['cli', 'cli.ts', 'daemon', 'fleet'],
];

const MAX_DEPTH = 4;
const isFile = (module) => module.endsWith('.ts');
const bare = (module) => module.replace(/\.ts$/, '');
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The files of a module that sit `depth` folders below src/ (0: the top-level files). */
function filesAt(module, depth) {
  if (isFile(module)) return depth === 0 ? [`src/${module}`] : [];
  return depth === 0 ? [] : [`src/${module}/${'*/'.repeat(depth - 1)}*.ts`];
}

/** An import specifier, written in a file `depth` folders below src/, that reaches the src/ module `name`. */
function reaching(module, depth) {
  const up = depth === 0 ? '\\./' : `(\\.\\./){${depth}}`;
  return `^${up}${escape(bare(module))}(/|\\.js$)`;
}

function rulesFor(level, depth) {
  const mine = LAYERS[level];
  const above = LAYERS.slice(level + 1).flat();
  return {
    files: mine.flatMap((module) => filesAt(module, depth)),
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: above.map((module) => ({
            regex: reaching(module, depth),
            message: `${module} is in a layer above ${mine.join(', ')}: imports in src/ point down (test/eslint-layers.js)`,
          })),
        },
      ],
    },
  };
}

/** One flat-config entry per layer and folder depth (a relative import's number of ../ depends on the depth). */
export const layerRules = LAYERS.flatMap((_, level) => Array.from({ length: MAX_DEPTH + 1 }, (_unused, depth) => rulesFor(level, depth))).filter(
  (entry) => entry.files.length > 0 && entry.rules['no-restricted-imports'][1].patterns.length > 0,
);
