//! Layers that override only what they change: [`layer_trait!`] declares a port's layer trait,
//! whose every method goes to the store below by default, and makes each implementor a store
//! of that port (`store::StoreLayer`, `meta::MetaLayer`). A new operation of the port then
//! reaches every adapter through every layer without a line in the layers.

/// `pub trait $layer` with `inner()` and each listed method forwarding to it, and for each
/// listed part of `$port`, `impl $part` for every `$layer`.
macro_rules! layer_trait {
    (
        $(#[$doc:meta])*
        pub trait $layer:ident: $port:ident {
            $(impl $part:ident {
                $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*
            })*
        }
    ) => {
        $(#[$doc])*
        pub trait $layer: Send + Sync {
            /// The store below.
            fn inner(&self) -> &dyn $port;
            $($(fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.inner().$name($($arg),*)
            })*)*
        }

        $(impl<L: $layer> $part for L {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                $layer::$name(self $(, $arg)*)
            })*
        })*
    };
}
pub(crate) use layer_trait;
