// The no-code recovery console: built by the console's own change (see docs/operations.md).
export function mountConsole(section) {}
