package engines

// On Metal, bf16 runs at full speed: keep the checkpoint's dtype.
const defaultDType = "bf16"
