// Tests run in Node and import modules of every layer directly: install the Node host (file paths, diffusers
// folders, worker-thread kernels) as the Node entry does when it is loaded.
import { installNodeHost } from '../src/node/install.js';

installNodeHost();
