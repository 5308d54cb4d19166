//! Blitz runtime (skeleton; see issue "Runtime core").
