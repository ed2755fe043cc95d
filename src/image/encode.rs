//! Versioned, checksummed encoding of image-set manifests (owned by the store issue).
