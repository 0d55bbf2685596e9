//! Code generation of `#[task]`: the checked function signature and the generated
//! task struct.
//!
//! For `fn foo` the macro emits the function under a hidden name, a unit struct `foo`
//! (the task value, in the value namespace, and the type whose associated functions
//! are `foo::delay`, `foo::apply_async`, ...), and `impl Task for foo`. Everything
//! lives in the function's own scope, so argument types resolve exactly as they do in
//! the signature, also for tasks declared inside a function body. Generated code
//! names std items by full path (`::core::result::Result`, ...) so the user's own
//! `Result` or `Error` aliases cannot change its meaning.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::attr::{AutoRetry, Conflict, MaxRetries, RetryBackoff, TaskAttr};

/// Expands `#[task(attr)] item`; errors become `compile_error!`s next to the untouched
/// item, so the function body is still checked.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(attr, item.clone()) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#error #item)
        }
    }
}

pub(crate) fn try_expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let attr = TaskAttr::parse(attr);
    let func = syn::parse2::<ItemFn>(item).map_err(|error| {
        syn::Error::new(
            error.span(),
            format!("#[task] applies to a free function (`fn` or `async fn`): {error}"),
        )
    });
    let task = func
        .as_ref()
        .map_err(Clone::clone)
        .and_then(TaskFn::analyze);
    match (attr, func, task) {
        (Ok(attr), Ok(func), Ok(task)) => {
            check_lock_key(&attr, &task)?;
            Ok(generate(&attr, &func, &task))
        }
        (Err(mut error), _, Err(more)) => {
            error.combine(more);
            Err(error)
        }
        (Err(error), _, _) | (_, _, Err(error)) | (_, Err(error), _) => Err(error),
    }
}

/// How a parameter is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Decoded from the message's arguments.
    Wire,
    /// `ctx: TaskContext`.
    Context,
    /// `ctx: &TaskContext`.
    ContextRef,
}

struct Param {
    ident: Ident,
    ty: Type,
    kind: Kind,
}

impl Param {
    /// The argument's name on the wire (keyword arguments).
    fn wire_name(&self) -> String {
        self.ident.unraw().to_string()
    }
}

/// The checked signature of a task function.
struct TaskFn {
    params: Vec<Param>,
    /// `T` of `TaskResult<T>` / `Result<T, E>`.
    ok_ty: Type,
    /// The whole return type.
    ret_ty: Type,
    is_async: bool,
}

impl TaskFn {
    fn analyze(func: &ItemFn) -> syn::Result<TaskFn> {
        let sig = &func.sig;
        let mut errors: Vec<syn::Error> = Vec::new();
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new(
                sig.generics.span(),
                "#[task] functions cannot be generic: the worker decodes the arguments into concrete types",
            ));
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.push(syn::Error::new(
                unsafety.span(),
                "#[task] functions cannot be `unsafe`",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new(
                abi.span(),
                "#[task] functions cannot have an `extern` ABI",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(syn::Error::new(
                variadic.span(),
                "#[task] functions cannot be variadic",
            ));
        }
        let mut params = Vec::new();
        for input in &sig.inputs {
            match Self::param(input) {
                Ok(param) => params.push(param),
                Err(error) => errors.push(error),
            }
        }
        let contexts: Vec<&Param> = params.iter().filter(|p| p.kind != Kind::Wire).collect();
        if let Some(second) = contexts.get(1) {
            errors.push(syn::Error::new(
                second.ty.span(),
                "a #[task] function takes at most one `TaskContext` parameter",
            ));
        }
        let returned = Self::return_types(&sig.output);
        let (ok_ty, ret_ty) = match returned {
            Ok(types) => types,
            Err(error) => {
                errors.push(error);
                (Type::Verbatim(quote!(())), Type::Verbatim(quote!(())))
            }
        };
        if let Some(mut first) = errors.pop() {
            for error in errors {
                first.combine(error);
            }
            return Err(first);
        }
        Ok(TaskFn {
            params,
            ok_ty,
            ret_ty,
            is_async: sig.asyncness.is_some(),
        })
    }

    fn param(input: &FnArg) -> syn::Result<Param> {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "#[task] applies to free functions, not methods",
                ))
            }
            FnArg::Typed(typed) => typed,
        };
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "#[task] parameters must be plain names (`name: Type`): the name is the keyword argument on the wire",
                ))
            }
        };
        let ty = (*typed.ty).clone();
        let kind = match context_kind(&ty) {
            Some(kind) => kind?,
            None => {
                check_wire_type(&ty)?;
                Kind::Wire
            }
        };
        Ok(Param { ident, ty, kind })
    }

    fn return_types(output: &ReturnType) -> syn::Result<(Type, Type)> {
        const EXPECTED: &str = "a #[task] function must return `TaskResult<T>` or `Result<T, E>` where `E: Into<TaskError>` (any `std::error::Error` qualifies)";
        let ty = match output {
            ReturnType::Default => return Err(syn::Error::new(output.span(), EXPECTED)),
            ReturnType::Type(_, ty) => &**ty,
        };
        let path = match strip_groups(ty) {
            Type::Path(path) if path.qself.is_none() => &path.path,
            other => return Err(syn::Error::new(other.span(), EXPECTED)),
        };
        let Some(last) = path.segments.last() else {
            return Err(syn::Error::new(ty.span(), EXPECTED));
        };
        let arity = match last.ident.to_string().as_str() {
            "TaskResult" => 1..=1,
            // `Result<T, E>`, or an alias such as `std::io::Result<T>`.
            "Result" => 1..=2,
            _ => return Err(syn::Error::new(ty.span(), EXPECTED)),
        };
        let PathArguments::AngleBracketed(arguments) = &last.arguments else {
            return Err(syn::Error::new(ty.span(), EXPECTED));
        };
        let types: Vec<&Type> = arguments
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect();
        match types.first() {
            Some(ok) if arity.contains(&types.len()) => Ok(((*ok).clone(), ty.clone())),
            _ => Err(syn::Error::new(ty.span(), EXPECTED)),
        }
    }
}

fn strip_groups(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => strip_groups(&group.elem),
        Type::Paren(paren) => strip_groups(&paren.elem),
        other => other,
    }
}

fn is_context_type(ty: &Type) -> bool {
    match strip_groups(ty) {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().is_some_and(|segment| {
                segment.ident == "TaskContext" && segment.arguments.is_none()
            })
        }
        _ => false,
    }
}

/// `Some(kind)` when the parameter receives the task context.
fn context_kind(ty: &Type) -> Option<syn::Result<Kind>> {
    if is_context_type(ty) {
        return Some(Ok(Kind::Context));
    }
    match strip_groups(ty) {
        Type::Reference(reference) if is_context_type(&reference.elem) => {
            Some(match reference.mutability {
                None => Ok(Kind::ContextRef),
                Some(_) => Err(syn::Error::new(
                    ty.span(),
                    "take the context as `TaskContext` or `&TaskContext`, not `&mut TaskContext`",
                )),
            })
        }
        _ => None,
    }
}

fn check_wire_type(ty: &Type) -> syn::Result<()> {
    match strip_groups(ty) {
        Type::Reference(_) => Err(syn::Error::new(
            ty.span(),
            "#[task] arguments are decoded from the message and must be owned: use `String` instead of `&str`, `Vec<T>` instead of `&[T]`",
        )),
        Type::ImplTrait(_) => Err(syn::Error::new(
            ty.span(),
            "#[task] arguments need concrete types (no `impl Trait`): the worker decodes them from JSON",
        )),
        Type::Infer(_) | Type::Never(_) => Err(syn::Error::new(
            ty.span(),
            "#[task] arguments need a concrete, deserializable type",
        )),
        _ => Ok(()),
    }
}

fn is_attr(attr: &Attribute, name: &str) -> bool {
    attr.path().is_ident(name)
}

/// `Duration` as a constant expression.
fn duration_tokens(duration: Duration) -> TokenStream {
    let secs = Literal::u64_suffixed(duration.as_secs());
    let nanos = Literal::u32_suffixed(duration.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}

fn string_tokens(text: &syn::LitStr) -> TokenStream {
    quote!(::std::string::String::from(#text))
}

fn generate(attr: &TaskAttr, func: &ItemFn, task: &TaskFn) -> TokenStream {
    let krate = match &attr.krate {
        Some(path) => quote!(#path),
        None => quote!(::celeriac),
    };
    let private = quote!(#krate::__private);
    let core = quote!(#private::celeriac_core);
    let json = quote!(#private::serde_json);

    let vis = &func.vis;
    let fn_ident = &func.sig.ident;
    let fn_name = fn_ident.unraw().to_string();
    let hidden = format_ident!("__celeriac_task_{}", fn_name);
    let cfgs: Vec<&Attribute> = func.attrs.iter().filter(|a| is_attr(a, "cfg")).collect();
    let docs: Vec<&Attribute> = func.attrs.iter().filter(|a| is_attr(a, "doc")).collect();

    // The original function, under a hidden name.
    let mut hidden_fn = func.clone();
    hidden_fn.sig.ident = hidden.clone();
    hidden_fn.attrs.push(syn::parse_quote!(#[doc(hidden)]));
    // The framework dictates `TaskResult`; clippy's size lint on it is not the
    // user's to fix (see `TaskError`).
    hidden_fn
        .attrs
        .push(syn::parse_quote!(#[allow(clippy::result_large_err)]));

    let ok_ty = &task.ok_ty;
    let ret_ty = &task.ret_ty;
    let wire: Vec<&Param> = task
        .params
        .iter()
        .filter(|p| p.kind == Kind::Wire)
        .collect();
    let wire_idents: Vec<&Ident> = wire.iter().map(|p| &p.ident).collect();
    let wire_types: Vec<&Type> = wire.iter().map(|p| &p.ty).collect();
    let wire_names: Vec<String> = wire.iter().map(|p| p.wire_name()).collect();
    let taken = |name: &str| wire.iter().any(|p| p.ident.unraw() == name);
    let app = if taken("app") {
        format_ident!("__celeriac_app")
    } else {
        format_ident!("app")
    };
    let options_ident = if taken("options") {
        format_ident!("__celeriac_options")
    } else {
        format_ident!("options")
    };

    let name_value = match &attr.name {
        Some(name) => quote!(#name),
        None => default_name(&fn_name),
    };
    let options_body = options_body(attr, task, &core);

    // should_autoretry.
    let autoretry = if attr.autoretry_for.is_empty() {
        quote!()
    } else {
        let checks: Vec<TokenStream> = attr
            .autoretry_for
            .iter()
            .map(|entry| match entry {
                AutoRetry::Type(ty) => quote_spanned! {ty.span()=>
                    failure.is::<#ty>()
                },
                AutoRetry::Name(name) if name.value() == "*" => quote!(true),
                AutoRetry::Name(name) => quote!(failure.exc_type == #name),
            })
            .collect();
        quote! {
            fn should_autoretry(&self, failure: &#core::TaskFailure) -> bool {
                #(#checks)||*
            }
        }
    };

    // run: bind, call, catch panics, serialize.
    let arg_vars: Vec<Ident> = (0..wire.len())
        .map(|i| format_ident!("__celeriac_arg{}", i))
        .collect();
    let binder_mut = if wire.is_empty() {
        quote!()
    } else {
        quote!(mut)
    };
    // Spanned at each parameter's type / the result type, so a type that is not
    // `Deserialize` / `Serialize` is reported there.
    let next: Vec<TokenStream> = wire
        .iter()
        .map(|p| {
            let (ty, name) = (&p.ty, p.wire_name());
            quote_spanned!(ty.span()=> __binder.next::<#ty>(#name))
        })
        .collect();
    let serialize = quote_spanned!(ok_ty.span()=> #core::TaskError::serialize_result(__value));
    let bind = quote! {
        let #binder_mut __binder = #private::ArgBinder::new(__args, __kwargs);
        #( let #arg_vars = #next?; )*
        __binder.finish()?;
    };
    let mut wire_vars = arg_vars.iter();
    let call_args: Vec<TokenStream> = task
        .params
        .iter()
        .map(|param| match param.kind {
            Kind::Wire => {
                let var = wire_vars.next();
                quote!(#var)
            }
            Kind::Context => quote!(__ctx),
            Kind::ContextRef => quote!(&__ctx),
        })
        .collect();
    let uses_ctx = task.params.iter().any(|p| p.kind != Kind::Wire);
    let drop_ctx = if uses_ctx {
        quote!()
    } else {
        quote!(::core::mem::drop(__ctx);)
    };
    // Spanned at the return type, so an error type without `Into<TaskError>` is
    // reported there.
    let convert = quote_spanned!(ret_ty.span()=> Self::__celeriac_into_task_result(__result));
    let finish = quote! {
        let __value: #ok_ty = #convert?;
    };
    let panic_failure = quote! {
        #core::TaskError::fail(
            "WorkerLostError",
            ::std::format!("panic: {}", Self::__celeriac_panic_message(&*__panic)),
        )
    };
    let invoke = if task.is_async {
        quote! {
            let mut __future = ::core::pin::pin!(#hidden(#(#call_args),*));
            let __outcome = ::core::future::poll_fn(|__cx| {
                match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
                    ::core::future::Future::poll(::core::pin::Pin::as_mut(&mut __future), __cx)
                })) {
                    ::core::result::Result::Ok(::core::task::Poll::Ready(__result)) => {
                        ::core::task::Poll::Ready(::core::result::Result::Ok(__result))
                    }
                    ::core::result::Result::Ok(::core::task::Poll::Pending) => ::core::task::Poll::Pending,
                    ::core::result::Result::Err(__panic) => {
                        ::core::task::Poll::Ready(::core::result::Result::Err(__panic))
                    }
                }
            })
            .await;
            let __result = match __outcome {
                ::core::result::Result::Ok(__result) => __result,
                ::core::result::Result::Err(__panic) => return ::core::result::Result::Err(#panic_failure),
            };
        }
    } else {
        quote! {
            let __joined = #private::tokio::task::spawn_blocking(move || #hidden(#(#call_args),*)).await;
            let __result = match __joined {
                ::core::result::Result::Ok(__result) => __result,
                ::core::result::Result::Err(__error) => match __error.try_into_panic() {
                    ::core::result::Result::Ok(__panic) => return ::core::result::Result::Err(#panic_failure),
                    ::core::result::Result::Err(__error) => {
                        return ::core::result::Result::Err(#core::TaskError::fail(
                            "WorkerLostError",
                            ::std::format!("the blocking task did not finish: {}", __error),
                        ))
                    }
                },
            };
        }
    };

    // Arguments on the wire.
    let to_values: Vec<TokenStream> = wire
        .iter()
        .map(|p| {
            let (ident, ty) = (&p.ident, &p.ty);
            quote_spanned!(ty.span()=> #json::to_value(&#ident))
        })
        .collect();
    let send = quote_spanned!(ok_ty.span()=> #app.send_declared::<#ok_ty>);
    let encode = quote! {
        ::std::vec![#(
            #to_values.map_err(|__error| {
                #krate::Error::Encode(::std::format!(
                    "argument {:?} of task {}: {}", #wire_names, Self::NAME, __error
                ))
            })?
        ),*]
    };

    // Typed signatures for workflows: the whole call, and (with at least one
    // argument) the call without its first argument, which a chain fills with the
    // previous step's result.
    let typed = quote!(#krate::canvas::TypedSignature);
    let partial_fn = match wire.split_first() {
        Some((first, rest)) => {
            let first_ty = &first.ty;
            let rest_idents: Vec<&Ident> = rest.iter().map(|p| &p.ident).collect();
            let rest_types: Vec<&Type> = rest.iter().map(|p| &p.ty).collect();
            let rest_names: Vec<String> = rest.iter().map(|p| p.wire_name()).collect();
            let rest_values: Vec<TokenStream> = rest
                .iter()
                .map(|p| {
                    let (ident, ty) = (&p.ident, &p.ty);
                    quote_spanned!(ty.span()=> #json::to_value(&#ident))
                })
                .collect();
            quote! {
                /// A typed signature of this call without its first argument: in a
                /// chain it receives the previous step's result, whose type must match.
                #vis fn partial(
                    #(#rest_idents: #rest_types),*
                ) -> ::core::result::Result<#typed<#first_ty, #ok_ty>, #krate::Error> {
                    let __args: ::std::vec::Vec<#json::Value> = ::std::vec![#(
                        #rest_values.map_err(|__error| {
                            #krate::Error::Encode(::std::format!(
                                "argument {:?} of task {}: {}", #rest_names, Self::NAME, __error
                            ))
                        })?
                    ),*];
                    ::core::result::Result::Ok(#typed::new(#core::Signature::new(Self::NAME, __args)))
                }
            }
        }
        None => quote!(),
    };

    // Direct call.
    let call_params: Vec<TokenStream> = task
        .params
        .iter()
        .map(|p| {
            let (ident, ty) = (&p.ident, &p.ty);
            quote!(#ident: #ty)
        })
        .collect();
    let call_idents: Vec<&Ident> = task.params.iter().map(|p| &p.ident).collect();
    let call_fn = if task.is_async {
        quote! {
            /// Runs the task function here and now, without a broker (e.g. in unit tests).
            #vis async fn call(#(#call_params),*) -> #ret_ty {
                #hidden(#(#call_idents),*).await
            }
        }
    } else {
        quote! {
            /// Runs the task function here and now, on this thread, without a broker
            /// (e.g. in unit tests).
            #vis fn call(#(#call_params),*) -> #ret_ty {
                #hidden(#(#call_idents),*)
            }
        }
    };

    let struct_doc = format!(
        "The `{fn_name}` task (generated by `#[task]`): register it with `App::builder(..).task({fn_name})`; send it with `{fn_name}::delay(&app, ..)` or `{fn_name}::apply_async(&app, .., options)`."
    );
    let separator = if docs.is_empty() {
        quote!()
    } else {
        quote!(#[doc = ""])
    };

    quote! {
        #hidden_fn

        #(#cfgs)*
        #(#docs)*
        #separator
        #[doc = #struct_doc]
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #fn_ident;

        #(#cfgs)*
        #[allow(dead_code, clippy::too_many_arguments, clippy::needless_pass_by_value, clippy::result_large_err)]
        impl #fn_ident {
            /// The registered (wire) name of this task.
            #vis const NAME: &'static str = #name_value;

            /// Sends the task with default options; returns a handle to its result.
            #vis async fn delay(
                #app: &#krate::App,
                #(#wire_idents: #wire_types,)*
            ) -> ::core::result::Result<#krate::AsyncResult<#ok_ty>, #krate::Error> {
                Self::apply_async(#app, #(#wire_idents,)* ::core::default::Default::default()).await
            }

            /// Sends the task with per-call options (queue, countdown, eta, priority,
            /// ...); returns a handle to its result.
            #vis async fn apply_async(
                #app: &#krate::App,
                #(#wire_idents: #wire_types,)*
                #options_ident: #krate::SendOptions,
            ) -> ::core::result::Result<#krate::AsyncResult<#ok_ty>, #krate::Error> {
                let __args: ::std::vec::Vec<#json::Value> = #encode;
                #send(&Self, __args, #json::Map::new(), #options_ident).await
            }

            /// A signature of this call (task name and JSON arguments), for workflows.
            #vis fn signature(
                #(#wire_idents: #wire_types),*
            ) -> ::core::result::Result<#core::Signature, #krate::Error> {
                let __args: ::std::vec::Vec<#json::Value> = #encode;
                ::core::result::Result::Ok(#core::Signature::new(Self::NAME, __args))
            }

            /// A typed signature of this whole call (its result type travels with it),
            /// to start a typed chain or to run as an immutable step.
            #vis fn s(
                #(#wire_idents: #wire_types),*
            ) -> ::core::result::Result<#typed<(), #ok_ty>, #krate::Error> {
                let __args: ::std::vec::Vec<#json::Value> = #encode;
                ::core::result::Result::Ok(#typed::new(#core::Signature::new(Self::NAME, __args)))
            }

            #partial_fn

            #call_fn

            async fn __celeriac_run(
                __ctx: #core::TaskContext,
                __args: ::std::vec::Vec<#json::Value>,
                __kwargs: #json::Map<::std::string::String, #json::Value>,
            ) -> ::core::result::Result<#json::Value, #core::TaskError> {
                #bind
                #drop_ctx
                #invoke
                #finish
                #serialize
            }

            fn __celeriac_into_task_result<__T, __E: ::core::convert::Into<#core::TaskError>>(
                result: ::core::result::Result<__T, __E>,
            ) -> ::core::result::Result<__T, #core::TaskError> {
                ::core::result::Result::map_err(result, ::core::convert::Into::into)
            }

            fn __celeriac_panic_message(
                payload: &(dyn ::core::any::Any + ::core::marker::Send),
            ) -> ::std::string::String {
                if let ::core::option::Option::Some(message) = payload.downcast_ref::<&'static str>() {
                    return ::std::string::String::from(*message);
                }
                if let ::core::option::Option::Some(message) = payload.downcast_ref::<::std::string::String>() {
                    return ::core::clone::Clone::clone(message);
                }
                ::std::string::String::from("panic with a non-string payload")
            }
        }

        #(#cfgs)*
        impl #core::Task for #fn_ident {
            fn name(&self) -> &str {
                Self::NAME
            }

            fn options(&self) -> &#core::TaskOptions {
                static OPTIONS: ::std::sync::OnceLock<#core::TaskOptions> = ::std::sync::OnceLock::new();
                OPTIONS.get_or_init(|| { #options_body })
            }

            fn run(
                &self,
                ctx: #core::TaskContext,
                args: ::std::vec::Vec<#json::Value>,
                kwargs: #json::Map<::std::string::String, #json::Value>,
            ) -> #core::TaskFuture {
                ::std::boxed::Box::pin(Self::__celeriac_run(ctx, args, kwargs))
            }

            fn check_args(
                &self,
                args: &[#json::Value],
                kwargs: &#json::Map<::std::string::String, #json::Value>,
            ) -> ::core::result::Result<(), #core::TaskError> {
                let __args = ::std::vec::Vec::from(args);
                let __kwargs = ::core::clone::Clone::clone(kwargs);
                #bind
                #( let _ = #arg_vars; )*
                ::core::result::Result::Ok(())
            }

            #autoretry
        }
    }
}

/// The default name, a constant expression: the module path with dots plus the
/// function name (`my_crate::jobs` + `resize` -> `"my_crate.jobs.resize"`).
fn default_name(fn_name: &str) -> TokenStream {
    let suffix = format!("::{fn_name}");
    quote! {{
        const PATH: &str = ::core::concat!(::core::module_path!(), #suffix);

        const fn dotted_len(path: &str) -> usize {
            let bytes = path.as_bytes();
            let (mut i, mut len) = (0, 0);
            while i < bytes.len() {
                if i + 1 < bytes.len() && bytes[i] == b':' && bytes[i + 1] == b':' {
                    i += 2;
                } else {
                    i += 1;
                }
                len += 1;
            }
            len
        }

        const fn dotted<const N: usize>(path: &str) -> [u8; N] {
            let bytes = path.as_bytes();
            let mut out = [0u8; N];
            let (mut i, mut j) = (0, 0);
            while i < bytes.len() {
                if i + 1 < bytes.len() && bytes[i] == b':' && bytes[i + 1] == b':' {
                    out[j] = b'.';
                    i += 2;
                } else {
                    out[j] = bytes[i];
                    i += 1;
                }
                j += 1;
            }
            out
        }

        const LEN: usize = dotted_len(PATH);
        const DOTTED: [u8; LEN] = dotted::<LEN>(PATH);
        match ::core::str::from_utf8(&DOTTED) {
            ::core::result::Result::Ok(name) => name,
            ::core::result::Result::Err(_) => ::core::panic!("module paths are UTF-8"),
        }
    }}
}

/// Every `lock_key` name must be a parameter decoded from the message.
fn check_lock_key(attr: &TaskAttr, task: &TaskFn) -> syn::Result<()> {
    let Some(key) = &attr.lock_key else {
        return Ok(());
    };
    let wire: Vec<String> = task
        .params
        .iter()
        .filter(|p| p.kind == Kind::Wire)
        .map(Param::wire_name)
        .collect();
    for name in &key.value {
        if !wire.contains(name) {
            let known = if wire.is_empty() {
                "the task has no arguments".to_string()
            } else {
                format!("its arguments are: {}", wire.join(", "))
            };
            return Err(syn::Error::new(
                key.span,
                format!("`lock_key` names `{name}`, which is not an argument of the task; {known}"),
            ));
        }
    }
    Ok(())
}

/// The statements that set `__options.single_instance`, if the task is one.
fn single_instance_tokens(
    attr: &TaskAttr,
    task: &TaskFn,
    core: &TokenStream,
) -> Option<TokenStream> {
    if !attr.is_single_instance() {
        return None;
    }
    let some = quote!(::core::option::Option::Some);
    let task_mod = quote!(#core::task);
    let mut sets = Vec::new();
    if let Some(key) = &attr.lock_key {
        let wire: Vec<String> = task
            .params
            .iter()
            .filter(|p| p.kind == Kind::Wire)
            .map(Param::wire_name)
            .collect();
        let args: Vec<TokenStream> = key
            .value
            .iter()
            .map(|name| {
                let position = wire.iter().position(|w| w == name).unwrap_or_default();
                let position = Literal::usize_suffixed(position);
                quote!(#task_mod::KeyArg::new(#name, #some(#position)))
            })
            .collect();
        sets.push(quote!(__single.key = #task_mod::LockKey::Args(::std::vec![#(#args),*]);));
    }
    let retry_after = match &attr.lock_retry_delay {
        Some(delay) => duration_tokens(delay.value),
        None => quote!(#task_mod::SingleInstance::DEFAULT_RETRY_AFTER),
    };
    match attr.on_conflict.as_ref().map(|c| c.value) {
        None | Some(Conflict::Skip) => {}
        Some(Conflict::Retry) => sets.push(quote! {
            __single.on_conflict = #task_mod::OnConflict::Retry { countdown: #retry_after };
        }),
        Some(Conflict::Wait) => {
            let up_to = duration_tokens(
                attr.lock_wait
                    .as_ref()
                    .map(|w| w.value)
                    .unwrap_or(LOCK_WAIT_DEFAULT),
            );
            sets.push(quote! {
                __single.on_conflict = #task_mod::OnConflict::Wait {
                    up_to: #up_to,
                    then_retry_after: #retry_after,
                };
            });
        }
    }
    if let Some(lease) = &attr.lock_lease {
        let value = duration_tokens(lease.value);
        sets.push(quote!(__single.lease = #value;));
    }
    let binding = if sets.is_empty() {
        quote!()
    } else {
        quote!(mut)
    };
    Some(quote! {
        let #binding __single = #task_mod::SingleInstance::new();
        #(#sets)*
        __options.single_instance = #some(__single);
    })
}

/// `lock_wait` when not given with `on_conflict = "wait"`.
const LOCK_WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// The body of the `OnceLock` initializer that builds `TaskOptions`.
fn options_body(attr: &TaskAttr, task: &TaskFn, core: &TokenStream) -> TokenStream {
    let some = quote!(::core::option::Option::Some);
    let mut sets = Vec::new();
    if let Some(queue) = &attr.queue {
        let value = string_tokens(queue);
        sets.push(quote!(__options.queue = #some(#value);));
    }
    if let Some(key) = &attr.routing_key {
        let value = string_tokens(key);
        sets.push(quote!(__options.routing_key = #some(#value);));
    }
    if let Some(exchange) = &attr.exchange {
        let value = string_tokens(exchange);
        sets.push(quote!(__options.exchange = #some(#value);));
    }
    if let Some(priority) = attr.priority {
        let value = Literal::u8_suffixed(priority);
        sets.push(quote!(__options.priority = #some(#value);));
    }
    if let Some(acks_late) = attr.acks_late {
        sets.push(quote!(__options.acks_late = #some(#acks_late);));
    }
    if let Some(ignore) = attr.ignore_result {
        sets.push(quote!(__options.ignore_result = #ignore;));
    }
    match attr.max_retries {
        Some(MaxRetries::Limited(n)) => {
            let value = Literal::u32_suffixed(n);
            sets.push(quote!(__options.max_retries = #some(#value);));
        }
        Some(MaxRetries::Unlimited) => {
            sets.push(quote!(__options.max_retries = ::core::option::Option::None;))
        }
        None => {}
    }
    if let Some(delay) = attr.default_retry_delay {
        let value = duration_tokens(delay);
        sets.push(quote!(__options.default_retry_delay = #value;));
    }
    match attr.retry_backoff.as_ref().map(|b| b.value) {
        Some(RetryBackoff::On | RetryBackoff::Base(_)) => {
            let mut backoff = Vec::new();
            if let Some(RetryBackoff::Base(base)) = attr.retry_backoff.as_ref().map(|b| b.value) {
                let value = duration_tokens(base);
                backoff.push(quote!(__backoff.base = #value;));
            }
            if let Some(max) = &attr.retry_backoff_max {
                let value = duration_tokens(max.value);
                backoff.push(quote!(__backoff.max = #value;));
            }
            if let Some(jitter) = &attr.retry_jitter {
                let value = jitter.value;
                backoff.push(quote!(__backoff.jitter = #value;));
            }
            let binding = if backoff.is_empty() {
                quote!()
            } else {
                quote!(mut)
            };
            sets.push(quote! {
                let #binding __backoff = <#core::Backoff as ::core::default::Default>::default();
                #(#backoff)*
                __options.retry_backoff = #some(__backoff);
            });
        }
        Some(RetryBackoff::Off) => {
            sets.push(quote!(__options.retry_backoff = ::core::option::Option::None;))
        }
        None => {}
    }
    let names: Vec<&syn::LitStr> = attr
        .autoretry_for
        .iter()
        .filter_map(|entry| match entry {
            AutoRetry::Name(name) => Some(name),
            AutoRetry::Type(_) => None,
        })
        .collect();
    if !names.is_empty() {
        sets.push(quote! {
            __options.autoretry_for = ::std::vec![#(::std::string::String::from(#names)),*];
        });
    }
    for (field, value) in [
        (
            "soft_time_limit",
            attr.soft_time_limit.as_ref().map(|s| s.value),
        ),
        ("time_limit", attr.time_limit.as_ref().map(|s| s.value)),
        ("expires", attr.expires),
    ] {
        if let Some(duration) = value {
            let field = Ident::new(field, Span::call_site());
            let value = duration_tokens(duration);
            sets.push(quote!(__options.#field = #some(#value);));
        }
    }
    if let Some(rate) = attr.rate_limit {
        let count = Literal::f64_suffixed(rate.count);
        let per = Literal::u64_suffixed(rate.per_secs);
        sets.push(quote! {
            __options.rate_limit = #some(#core::RateLimit {
                count: #count,
                per: ::core::time::Duration::from_secs(#per),
            });
        });
    }
    if !task.is_async {
        sets.push(quote!(__options.blocking = true;));
    }
    if let Some(skip) = attr.skip_if_succeeded {
        sets.push(quote!(__options.skip_if_succeeded = #skip;));
    }
    if let Some(single) = single_instance_tokens(attr, task, core) {
        sets.push(single);
    }
    if sets.is_empty() {
        return quote!(<#core::TaskOptions as ::core::default::Default>::default());
    }
    quote! {
        let mut __options = <#core::TaskOptions as ::core::default::Default>::default();
        #(#sets)*
        __options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(attr: TokenStream, item: TokenStream) -> String {
        match try_expand(attr, item) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(error) => error
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn expands_a_plain_task() {
        let tokens = try_expand(
            quote!(name = "notify.send", queue = "short-task"),
            quote!(
                pub async fn send(user_id: u64, text: String) -> TaskResult<()> {
                    Ok(())
                }
            ),
        )
        .expect("expands")
        .to_string();
        assert!(
            tokens.contains("pub async fn __celeriac_task_send"),
            "{tokens}"
        );
        assert!(tokens.contains("pub struct send ;"), "{tokens}");
        assert!(tokens.contains("impl send"), "{tokens}");
    }

    #[test]
    fn rejects_signatures_the_worker_cannot_call() {
        let generic = error_of(
            quote!(),
            quote!(
                fn f<T>(x: T) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(generic.contains("cannot be generic"), "{generic}");
        let borrowed = error_of(
            quote!(),
            quote!(
                fn f(x: &str) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(borrowed.contains("must be owned"), "{borrowed}");
        let no_result = error_of(
            quote!(),
            quote!(
                fn f(x: u32) -> u32 {
                    x
                }
            ),
        );
        assert!(
            no_result.contains("must return `TaskResult<T>`"),
            "{no_result}"
        );
        let unit = error_of(
            quote!(),
            quote!(
                fn f() {}
            ),
        );
        assert!(unit.contains("must return"), "{unit}");
        let pattern = error_of(
            quote!(),
            quote!(
                fn f((a, b): (u8, u8)) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(pattern.contains("plain names"), "{pattern}");
        let two = error_of(
            quote!(),
            quote!(
                fn f(a: TaskContext, b: &TaskContext) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(two.contains("at most one"), "{two}");
        let method = error_of(
            quote!(),
            quote!(
                fn f(&self) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(method.contains("not methods"), "{method}");
        let not_fn = error_of(
            quote!(),
            quote!(
                struct S;
            ),
        );
        assert!(not_fn.contains("applies to a free function"), "{not_fn}");
    }

    #[test]
    fn reports_attribute_and_signature_errors_together() {
        let both = error_of(
            quote!(expires = "30 parsecs"),
            quote!(
                fn f<T>() -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(both.contains("invalid duration unit"), "{both}");
        assert!(both.contains("cannot be generic"), "{both}");
    }

    #[test]
    fn lock_key_names_must_be_arguments() {
        let unknown = error_of(
            quote!(single_instance, lock_key = "customer"),
            quote!(
                async fn charge(ctx: TaskContext, customer_id: u64) -> TaskResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(unknown.contains("not an argument of the task"), "{unknown}");
        assert!(unknown.contains("customer_id"), "{unknown}");
        let tokens = try_expand(
            quote!(single_instance, lock_key = "region", on_conflict = "retry"),
            quote!(
                async fn charge(
                    ctx: &TaskContext,
                    customer_id: u64,
                    region: String,
                ) -> TaskResult<()> {
                    Ok(())
                }
            ),
        )
        .expect("expands")
        .to_string();
        assert!(
            tokens.contains(
                "KeyArg :: new (\"region\" , :: core :: option :: Option :: Some (1usize))"
            ),
            "{tokens}"
        );
        assert!(tokens.contains("OnConflict :: Retry"), "{tokens}");
    }

    #[test]
    fn errors_keep_the_original_item() {
        let tokens = expand(
            quote!(bogus = 1),
            quote!(
                fn f() -> TaskResult<()> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(tokens.contains("compile_error"), "{tokens}");
        assert!(tokens.contains("fn f"), "{tokens}");
    }
}
