/** The library version, recorded in the metadata of every file lora-mix writes. Keep in step with package.json. */
export const VERSION = '0.1.0';
