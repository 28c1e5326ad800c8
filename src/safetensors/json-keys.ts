/**
 * JSON.parse keeps the last of two equal keys and says nothing, so a header like
 * `{"w": {...}, "w": {...}}` would silently lose a tensor. This scanner walks the header text once, keeps only a
 * constant amount of state (no recursion, no stack that grows with nesting), and reports the first key that
 * repeats inside the top-level object or inside one of its direct child objects (a tensor entry or
 * `__metadata__`). It also returns the top-level keys in the order they appear in the text, which JS objects do
 * not preserve for integer-like keys.
 *
 * It must only be given text that JSON.parse has already accepted: it does not validate syntax.
 */

export interface DuplicateKey {
  /** The repeated key (decoded). */
  key: string;
  /** The top-level key whose object holds the duplicate, or null when the duplicate is at the top level. */
  parent: string | null;
}

export interface KeyScan {
  /** Top-level keys in text order. */
  keys: string[];
  duplicate: DuplicateKey | null;
  /** With `childKeys`: the keys of each top-level key's object value, in text order. */
  children?: Map<string, string[]>;
}

export interface ScanOptions {
  /** Also record the keys of every direct child object in text order (`KeyScan.children`). */
  readonly childKeys?: boolean;
}

const QUOTE = 0x22,
  BACKSLASH = 0x5c,
  LBRACE = 0x7b,
  RBRACE = 0x7d,
  LBRACKET = 0x5b,
  RBRACKET = 0x5d,
  COMMA = 0x2c;

export function scanKeys(text: string, options: ScanOptions = {}): KeyScan {
  const keys: string[] = [];
  const children = options.childKeys ? new Map<string, string[]>() : undefined;
  const done = (duplicate: DuplicateKey | null): KeyScan => ({ keys, duplicate, ...(children ? { children } : {}) });
  const top = new Set<string>();
  let child = new Set<string>();
  let parent: string | null = null;
  let depth = 0;
  // Whether the container at depth 1 / depth 2 is an object (depth 1 always is, for an accepted header).
  let objectAt2 = false;
  let expectKey = false;
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      // Find the closing quote: skip escaped characters.
      let j = i + 1;
      let escaped = false;
      for (;;) {
        if (j >= n) return done(null); // unterminated: cannot happen for parsed JSON
        const d = text.charCodeAt(j);
        if (d === BACKSLASH) {
          escaped = true;
          j += 2;
          continue;
        }
        if (d === QUOTE) break;
        j++;
      }
      if (expectKey && (depth === 1 || (depth === 2 && objectAt2))) {
        const raw = text.slice(i + 1, j);
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : raw;
        if (depth === 1) {
          if (top.has(key)) return done({ key, parent: null });
          top.add(key);
          keys.push(key);
          parent = key;
        } else {
          if (child.has(key)) return done({ key, parent });
          child.add(key);
          if (children && parent !== null) {
            const list = children.get(parent);
            if (list) list.push(key);
            else children.set(parent, [key]);
          }
        }
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === LBRACE || c === LBRACKET) {
      depth++;
      if (depth === 1) expectKey = c === LBRACE;
      else if (depth === 2) {
        objectAt2 = c === LBRACE;
        expectKey = objectAt2;
        if (objectAt2) child = new Set<string>();
      }
    } else if (c === RBRACE || c === RBRACKET) {
      depth--;
      expectKey = false;
    } else if (c === COMMA) {
      if (depth === 1 || (depth === 2 && objectAt2)) expectKey = true;
    }
    i++;
  }
  return done(null);
}
