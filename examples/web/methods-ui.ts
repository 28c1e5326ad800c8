/**
 * The merge-method controls, generated from the library's registry (METHODS and PARAMS in src/lora/methods.ts):
 * one option per method, and for the chosen method one field per parameter, checked with resolveMethod — the
 * same check the API and the CLI apply — so the page offers exactly what the library does.
 */
import { LoraMixError } from '../../src/core/errors.js';
import { METHOD_NAMES, METHODS, PARAMS, resolveMethod, type MethodSpec } from '../../src/lora/methods.js';

type ParamName = keyof typeof PARAMS;

export interface MethodChoice {
  method: string;
  params: Record<string, number | string>;
  /** True for methods on dense deltas: they need a target rank. */
  needsRank: boolean;
  /** Problems, by field: a parameter's name, or 'method' for the method as a whole (e.g. input count). */
  errors: Map<string, string>;
}

const describeError = (e: unknown) => (e instanceof LoraMixError ? `${e.code} — ${e.message}` : String(e));

export interface MethodControls {
  read(inputCount: number): MethodChoice;
  /** Show the errors of `read` next to their fields. */
  show(choice: MethodChoice): void;
}

export function methodControls(
  select: HTMLSelectElement,
  help: HTMLElement,
  methodError: HTMLElement,
  container: HTMLElement,
  onChange: () => void,
): MethodControls {
  for (const name of METHOD_NAMES) {
    const spec: MethodSpec = METHODS[name];
    const option = document.createElement('option');
    option.value = name;
    option.textContent = name === 'concat' ? 'concat (exact sum)' : name.replace('_', ' ');
    option.title = spec.summary;
    select.append(option);
  }
  select.value = 'concat';
  let fields = new Map<ParamName, { input: HTMLInputElement | HTMLSelectElement; error: HTMLElement }>();

  function build(): void {
    const spec: MethodSpec = METHODS[select.value as keyof typeof METHODS];
    help.textContent = spec.summary;
    fields = new Map();
    container.replaceChildren();
    for (const name of spec.params) {
      const p = PARAMS[name];
      const id = `param-${name}`;
      const field = document.createElement('div');
      field.className = 'field';
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent =
        name === 'majoritySign' ? 'Majority sign' : name === 't' ? 'Slerp t' : name[0]!.toUpperCase() + name.slice(1);
      let input: HTMLInputElement | HTMLSelectElement;
      if (p.kind === 'choice') {
        const s = document.createElement('select');
        for (const c of p.choices ?? []) s.append(new Option(c, c));
        s.value = String(p.default);
        input = s;
      } else {
        const i = document.createElement('input');
        i.type = 'text';
        i.inputMode = p.kind === 'integer' ? 'numeric' : 'decimal';
        i.value = String(p.default);
        input = i;
      }
      input.id = id;
      const hint = document.createElement('p');
      hint.className = 'hint';
      hint.id = `${id}-hint`;
      hint.textContent = p.doc;
      const error = document.createElement('p');
      error.className = 'field-error';
      error.id = `${id}-error`;
      error.hidden = true;
      input.setAttribute('aria-describedby', `${hint.id} ${error.id}`);
      input.addEventListener('input', onChange);
      input.addEventListener('change', onChange);
      field.append(label, input, hint, error);
      container.append(field);
      fields.set(name, { input, error });
    }
  }
  select.addEventListener('change', () => {
    build();
    onChange();
  });
  build();

  return {
    read(inputCount) {
      const method = select.value;
      const spec: MethodSpec = METHODS[method as keyof typeof METHODS];
      const params: Record<string, number | string> = {};
      const errors = new Map<string, string>();
      for (const [name, { input }] of fields) {
        const p = PARAMS[name];
        const text = input.value.trim();
        const value = p.kind === 'choice' ? text : text === '' ? Number.NaN : Number(text);
        params[name] = value;
        try {
          resolveMethod({ method, [name]: value }, spec.inputs ?? inputCount);
        } catch (e) {
          errors.set(name, describeError(e));
        }
      }
      if (errors.size === 0) {
        try {
          resolveMethod({ method, ...params }, inputCount);
        } catch (e) {
          errors.set('method', describeError(e));
        }
      }
      return { method, params, needsRank: spec.space === 'delta', errors };
    },
    show(choice) {
      for (const [name, { input, error }] of fields) {
        const text = choice.errors.get(name);
        error.hidden = text === undefined;
        error.textContent = text ?? '';
        if (text === undefined) input.removeAttribute('aria-invalid');
        else input.setAttribute('aria-invalid', 'true');
      }
      const whole = choice.errors.get('method');
      methodError.hidden = whole === undefined;
      methodError.textContent = whole ?? '';
    },
  };
}
